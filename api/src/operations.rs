//! Liveness and a small status report.

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use sagaflow_engine::runtime::Runtime;

use crate::Tag;

#[derive(Object)]
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
}

pub struct OperationsApi {
    pub rt: Runtime,
}

#[OpenApi(tag = "Tag::Operations")]
impl OperationsApi {
    /// Liveness: the process is up and serving.
    #[oai(path = "/health", method = "get")]
    async fn health(&self) -> Json<Health> {
        Json(Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            live_instances: self.rt.live_instances() as u64,
            pending_timers: self.rt.pending_timers() as u64,
            durability: self.rt.store().durability(),
        })
    }
}
