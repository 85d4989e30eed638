//! `sagaflow openapi`: the HTTP API's OpenAPI document, as docs/openapi.json holds it.

use std::sync::Arc;

use sagaflow_engine::runtime::{Runtime, RuntimeConfig};
use sagaflow_engine::saga::SystemClock;
use sagaflow_engine::store::memory::MemoryStore;

/// The server URL written into the document (the one `serve` listens on by default).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

pub async fn run(format: crate::SpecFormat) -> anyhow::Result<()> {
    // The document does not depend on the store; an empty in-memory one will do.
    let rt = Runtime::new(
        Arc::new(MemoryStore::new()),
        None,
        Arc::new(SystemClock),
        RuntimeConfig::default(),
    )
    .await?;
    let config = sagaflow_api::ApiConfig {
        body_limit: 0,
        demo: None,
        public_url: DEFAULT_URL.into(),
        tokens: Default::default(),
        metrics: None,
    };
    let api = sagaflow_api::openapi(rt, &config);
    match format {
        crate::SpecFormat::Json => println!("{}", api.spec()),
        crate::SpecFormat::Yaml => print!("{}", api.spec_yaml()),
    }
    Ok(())
}
