//! Every role against every protected operation of the served spec: a role
//! that may not is refused with 403, a role that may is never refused. And a
//! worker whose token names its queues may neither take nor answer another
//! queue's tasks.

mod common;

use common::{client_with, get_json, post_json, serve_in, temp_dir};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SCOPED_WORKER: &str = "test-hotel-worker-token-0123456789";

/// Which roles may call each operation (admin may call all of them).
fn allowed(operation: &str) -> &'static [&'static str] {
    const READ: &[&str] = &["admin", "operator", "client"];
    const OPERATE: &[&str] = &["admin", "operator"];
    const WORK: &[&str] = &["admin", "worker"];
    const ADMIN: &[&str] = &["admin"];
    const ANY: &[&str] = &["admin", "operator", "client", "worker"];
    match operation {
        "whoami" => ANY,
        "publish_workflow" | "issue_token" | "list_tokens" | "revoke_token" => ADMIN,
        "list_workflows"
        | "get_workflow"
        | "get_workflow_graph"
        | "list_instances"
        | "get_instance"
        | "get_instance_events"
        | "get_instance_state"
        | "get_order"
        | "list_customer_orders"
        | "watch_changes"
        | "start_instance"
        | "create_order" => READ,
        "pause_instance" | "resume_instance" | "retry_instance" | "signal_instance"
        | "move_timer" | "cancel_instance" | "metrics" => OPERATE,
        "poll_task" | "complete_task" | "fail_task" | "heartbeat_task" => WORK,
        other => panic!("operation `{other}` has no row in the role table: add one"),
    }
}

/// A well-formed request for each operation (query and body), so what is
/// checked is the role, not the request's shape.
fn well_formed(operation: &str) -> (&'static str, Value) {
    match operation {
        "get_instance_state" => ("revision=0", json!({})),
        "poll_task" => ("wait=0s", json!({})),
        "publish_workflow" => (
            "",
            json!({"source": "name: roles-check\nsteps:\n  - name: nap\n    wait: { duration: 1s }\n"}),
        ),
        "move_timer" => ("", json!({"fire_now": true})),
        "create_order" => (
            "",
            json!({"order_id": "r-1", "customer_id": "c-1", "items": [{"sku": "w", "qty": 1}], "amount": 1}),
        ),
        "complete_task" => ("", json!({"output": {}})),
        "fail_task" => ("", json!({"error": "no"})),
        "issue_token" => ("", json!({"name": "roles-check", "role": "client"})),
        _ => ("", json!({})),
    }
}

#[tokio::test]
async fn every_role_is_refused_exactly_what_it_may_not_do() {
    let dir = temp_dir("roles");
    let tokens = format!(
        "client:{},worker:{},operator:{},worker@hotels:{SCOPED_WORKER}",
        common::CLIENT_TOKEN,
        common::WORKER_TOKEN,
        common::OPERATOR_TOKEN
    );
    let s = serve_in(&dir, "server.log", &[], &[("SAGAFLOW_TOKENS", &tokens)]);
    let spec: Value = get_json(&client_with(None), format!("{}/openapi.json", s.url))
        .await
        .1;
    let roles = [
        ("admin", common::ADMIN_TOKEN),
        ("operator", common::OPERATOR_TOKEN),
        ("client", common::CLIENT_TOKEN),
        ("worker", common::WORKER_TOKEN),
    ];
    let mut checked = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op.get("security").is_none() {
                continue;
            }
            let operation = op["operationId"].as_str().unwrap();
            let filled = path
                .split('/')
                .map(|part| match part {
                    "{id}" | "{instance_id}" => "00000000-0000-0000-0000-000000000000",
                    p if p.starts_with('{') => "x",
                    p => p,
                })
                .collect::<Vec<_>>()
                .join("/");
            let (query, body) = well_formed(operation);
            let url = format!("{}{filled}?{query}", s.url);
            for (role, token) in roles {
                let r = client_with(Some(token))
                    .request(method.to_uppercase().parse().unwrap(), &url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let may = allowed(operation).contains(&role);
                if may {
                    assert!(
                        status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                        "{role} may {operation}, got {status}"
                    );
                } else {
                    let p: Value = r.json().await.unwrap_or(Value::Null);
                    assert_eq!(
                        (status, p["type"].as_str()),
                        (StatusCode::FORBIDDEN, Some("/problems/forbidden")),
                        "{role} may not {operation}: {p}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 4 * 24, "{checked} role × operation pairs");

    // a worker of `hotels` only, and a task waiting on `flights`
    let admin = client_with(Some(common::ADMIN_TOKEN));
    let input = json!({"trip_id": "t-1", "traveller": "ada", "from": "LHR", "to": "OSL", "depart": "2027-01-02", "return": "2027-01-09"});
    let (status, started) = post_json(
        &admin,
        format!("{}/workflows/trip-booking/instances", s.url),
        input,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let task_id = format!("{}:flight:1", started["id"].as_str().unwrap());
    let scoped = client_with(Some(SCOPED_WORKER));
    let calls = [
        format!("{}/tasks/flights/poll?wait=0s", s.url),
        format!("{}/tasks/{task_id}/heartbeat", s.url),
        format!("{}/tasks/{task_id}/complete", s.url),
        format!("{}/tasks/{task_id}/fail", s.url),
    ];
    for url in &calls {
        let (status, p) = post_json(&scoped, url.clone(), json!({"error": "no"})).await;
        assert_eq!(
            (status, p["type"].as_str()),
            (StatusCode::FORBIDDEN, Some("/problems/forbidden")),
            "{url}: {p}"
        );
    }
    let r = scoped
        .post(format!("{}/tasks/hotels/poll?wait=0s", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "its own queue is open to it"
    );
    // the task was not touched: a worker of every queue takes and answers it
    let worker = client_with(Some(common::WORKER_TOKEN));
    let (status, task) = post_json(
        &worker,
        format!("{}/tasks/flights/poll?wait=10s", s.url),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, task["id"].as_str()),
        (StatusCode::OK, Some(task_id.as_str())),
        "{task}"
    );
    let (status, answer) = post_json(
        &worker,
        format!("{}/tasks/{task_id}/complete", s.url),
        json!({"output": {"ref": "F-1"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}
