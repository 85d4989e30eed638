//! OpenTelemetry export: with `SAGAFLOW_OTLP_ENDPOINT`, spans reach an
//! OTLP/HTTP collector (a stand-in in this test that keeps the request bodies).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, get_json};
use poem::web::Data;
use poem::{handler, post, EndpointExt, Route};

type Bodies = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[handler]
fn traces(Data(bodies): Data<&Bodies>, req: &poem::Request, body: Vec<u8>) -> poem::Response {
    let ct = req.content_type().unwrap_or_default().to_string();
    bodies.lock().unwrap().push((ct, body));
    // an empty ExportTraceServiceResponse
    poem::Response::builder()
        .content_type("application/x-protobuf")
        .body(Vec::<u8>::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_attempts_reach_an_otlp_collector() {
    let bodies: Bodies = Arc::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Route::new()
        .at("/v1/traces", post(traces))
        .data(bodies.clone());
    tokio::spawn(sagaflow_api::serve(
        listener,
        app,
        std::future::pending(),
        Default::default(),
    ));

    let dir = common::temp_dir("otel");
    let endpoint = format!("http://{addr}");
    let s = common::serve_in(
        &dir,
        "server.log",
        &[],
        &[
            ("SAGAFLOW_OTLP_ENDPOINT", endpoint.as_str()),
            ("SAGAFLOW_LOG", "info"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let c = client();
    let (_, started) = common::post_json(
        &c,
        format!("{}/workflows/order/instances", s.url),
        common::order(1, 10.0),
    )
    .await;
    let id = started["id"].as_str().unwrap().to_string();
    get_json(&c, format!("{}/instances/{id}?wait=30s", s.url)).await;
    let mut found = false;
    for _ in 0..100 {
        found = bodies.lock().unwrap().iter().any(|(ct, b)| {
            let has = |needle: &str| b.windows(needle.len()).any(|w| w == needle.as_bytes());
            ct.starts_with("application/x-protobuf")
                && has("attempt")
                && has(&id)
                && has("sagaflow")
        });
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        found,
        "no span of instance {id} reached the collector ({} requests); log:\n{}",
        bodies.lock().unwrap().len(),
        s.log()
    );
}
