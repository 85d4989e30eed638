//! Liveness and a small status report.

use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};
use sagaflow_engine::runtime::Runtime;

use crate::auth::{Auth, Need};
use crate::problem::ApiError;
use crate::Tag;

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
    pub version: String,
    /// Instances that have not ended, held in memory.
    pub live_instances: u64,
    /// Timers armed and not yet fired.
    pub pending_timers: u64,
    /// How events reach disk.
    pub durability: String,
    /// With replicas on a shared store: this replica's name.
    pub replica: Option<String>,
    /// With replicas: the partitions (of 64) whose instances this replica
    /// drives; an instance's partition is its id as a 128-bit number modulo 64.
    pub partitions: Option<Vec<u32>>,
}

/// Whether this replica should be sent traffic.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Readiness {
    /// `ready`.
    pub status: String,
    /// The event store answered a read.
    pub store: String,
    /// Events the read models have yet to apply.
    pub read_model_lag: Option<u64>,
}

/// Who a token belongs to and what it may do.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Me {
    /// `admin`, `operator`, `client` or `worker`.
    pub role: String,
    /// What the role allows: `read`, `start`, `operate` (signal, cancel, pause,
    /// resume, retry, move timers), `observe` (metrics), `publish`,
    /// `manage_tokens`, `work` (take tasks).
    pub may: Vec<String>,
    /// For a worker token limited to some queues: those queues.
    pub queues: Option<Vec<String>>,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Ready: the store answers and the migrations have run.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// Not ready: the event store does not answer, or refused an append in
    /// the last 5 s (none succeeding since), or the read models have failed
    /// to catch up for 3 s or more; see `detail`.
    #[oai(status = 503, content_type = "application/problem+json")]
    NotReady(Json<crate::problem::Problem>),
}

#[derive(ApiResponse)]
pub enum MetricsResponse {
    /// The Prometheus text exposition format.
    #[oai(status = 200, content_type = "text/plain; version=0.0.4")]
    Metrics(PlainText<String>),
}

/// How long the read models may fail to catch up before the server says it is not ready.
const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

pub struct OperationsApi {
    pub rt: Runtime,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

#[OpenApi(tag = "Tag::Operations")]
impl OperationsApi {
    /// Liveness: the process is up and serving.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> Json<Health> {
        let (replica, partitions) = self.rt.partitions_held().unzip();
        Json(Health {
            replica,
            partitions,
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            live_instances: self.rt.live_instances() as u64,
            pending_timers: self.rt.pending_timers() as u64,
            durability: self.rt.store().durability(),
        })
    }

    /// Readiness: the event store answers and takes writes, and the read
    /// models keep up (they are migrated before the server listens).
    #[oai(path = "/ready", method = "get", operation_id = "ready")]
    async fn ready(&self) -> ReadyResponse {
        let not_ready =
            |detail: String| ReadyResponse::NotReady(Json(crate::problem::not_ready(detail)));
        if let Err(e) = self.rt.store_reachable().await {
            return not_ready(format!("the event store does not answer: {e}"));
        }
        if let Some(e) = self.rt.store_write_failure() {
            return not_ready(format!("the event store refuses writes: {e}"));
        }
        if let Some((for_, e)) = self
            .rt
            .read_model_stall()
            .filter(|(d, _)| *d >= STALL_LIMIT)
        {
            return not_ready(format!(
                "the read models have failed to catch up for {}s: {e}",
                for_.as_secs()
            ));
        }
        ReadyResponse::Ready(Json(Readiness {
            status: "ready".into(),
            store: "reachable".into(),
            read_model_lag: self.rt.read_model_lag(),
        }))
    }

    /// The calling token's role and what it may do (any valid token).
    #[oai(path = "/me", method = "get", operation_id = "whoami")]
    async fn me(&self, auth: Auth) -> Result<Json<Me>, ApiError> {
        use crate::auth::Need as N;
        let needs = [
            (N::Read, "read"),
            (N::Start, "start"),
            (N::Operate, "operate"),
            (N::Observe, "observe"),
            (N::Publish, "publish"),
            (N::ManageTokens, "manage_tokens"),
            (N::Work, "work"),
        ];
        Ok(Json(Me {
            role: auth.0.role.name().into(),
            may: needs
                .into_iter()
                .filter(|(n, _)| auth.0.role.allows(*n))
                .map(|(_, name)| name.to_string())
                .collect(),
            queues: auth.0.queues.clone(),
        }))
    }

    /// Prometheus metrics: sagas by outcome, step latency, retries, timer
    /// lag, projection lag, store commits (operator or admin token).
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self, auth: Auth) -> Result<MetricsResponse, ApiError> {
        auth.require(Need::Observe)?;
        let Some(handle) = &self.metrics else {
            return Err(ApiError::metrics_off());
        };
        use sagaflow_engine::telemetry as t;
        if let Some(lag) = self.rt.read_model_lag() {
            metrics::gauge!(t::PROJECTION_LAG).set(lag as f64);
        }
        metrics::gauge!(t::LIVE_INSTANCES).set(self.rt.live_instances() as f64);
        metrics::gauge!(t::PENDING_TIMERS).set(self.rt.pending_timers() as f64);
        if let Some((_, held)) = self.rt.partitions_held() {
            metrics::gauge!(t::PARTITIONS_HELD).set(held.len() as f64);
        }
        Ok(MetricsResponse::Metrics(PlainText(handle.render())))
    }
}
