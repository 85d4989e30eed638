//! Worker requests passed from one replica to another. A worker talks to any
//! replica; the one it reached asks the others for a task, or passes a
//! heartbeat on to the replica that holds the task. Only the API knows its
//! routes and its `Authorization` header, so the relay lives here: the engine
//! only says which replicas there are and which one holds an instance.

use std::time::Duration;

use serde_json::Value;

use crate::problem::ApiError;

/// Marks a request one replica relayed to another (answered locally only, so
/// it is never passed on again).
pub const RELAYED_HEADER: &str = "x-sagaflow-relayed";

/// How long a replica waits for another.
const RELAY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Default)]
pub struct Relay {
    http: reqwest::Client,
}

impl Relay {
    fn post(&self, url: String, authorization: Option<&str>) -> reqwest::RequestBuilder {
        let req = self
            .http
            .post(url)
            .header(RELAYED_HEADER, "1")
            .timeout(RELAY_TIMEOUT);
        match authorization {
            Some(a) => req.header("authorization", a),
            None => req,
        }
    }

    /// A task of `queue` from the first of `replicas` that has one at once, as
    /// its API answered it. The worker's `authorization` goes along, so each
    /// replica checks the worker's queues itself.
    pub async fn poll(
        &self,
        replicas: &[String],
        queue: &str,
        authorization: Option<&str>,
    ) -> Option<Value> {
        for url in replicas {
            let route = format!("{url}/tasks/{}/poll?wait=0s", segment(queue));
            match self.post(route, authorization).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => match r.json().await {
                    Ok(task) => return Some(task),
                    Err(e) => {
                        tracing::warn!(%url, error = %e, "unreadable task from another replica")
                    }
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%url, error = %e, "another replica did not answer a poll")
                }
            }
        }
        None
    }

    /// Passes a heartbeat to the replica at `holder`; its answer, as this API's.
    pub async fn heartbeat(
        &self,
        holder: &str,
        task_id: &str,
        authorization: Option<&str>,
    ) -> Result<(), ApiError> {
        let route = format!("{holder}/tasks/{}/heartbeat", segment(task_id));
        let unreachable = ApiError::replica_unavailable;
        match self.post(route, authorization).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Err(ApiError::from(
                sagaflow_engine::runtime::RuntimeError::UnknownTask(task_id.to_string()),
            )),
            Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => Err(ApiError::from(
                sagaflow_engine::runtime::RuntimeError::TaskGone(task_id.to_string()),
            )),
            Ok(r) => Err(unreachable(format!(
                "the replica holding the task answered {}",
                r.status()
            ))),
            Err(e) => Err(unreachable(format!(
                "the replica holding the task does not answer: {e}"
            ))),
        }
    }
}

/// A value as one path segment.
fn segment(s: &str) -> String {
    sagaflow_engine::runtime::http::percent_encode(s)
}
