//! Demo services so the example workflows run out of the box: inventory,
//! payments (declining amounts over a limit), shipping, and a generic
//! record service for the travel, fulfilment and ledger examples
//! (`POST /demo/{any/path}` creates a record, `DELETE` removes one; a path
//! segment or a top-level body text starting with `unavailable` is refused
//! with 409, to try failure paths).
//!
//! Each effect honours the `Idempotency-Key` header: a repeated key gets the
//! first answer again and changes nothing. `GET /demo/stats` shows what was
//! done and how often each key was seen, so tests can check effects happen once.
//! They can run inside `sagaflow serve` or as their own process (`sagaflow demo-services`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Json, Path};
use poem::{get, handler, post, EndpointExt, Response, Route};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Payments above this amount are declined (HTTP 402).
    pub payment_limit: f64,
    /// Every call takes this long (to make sagas overlap in tests and demos).
    pub latency: Duration,
    /// How many idempotency keys (and orders) the ledger remembers; the oldest go first.
    pub ledger_size: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            payment_limit: 1000.0,
            latency: Duration::ZERO,
            ledger_size: LEDGER_SIZE,
        }
    }
}

/// The keys and orders the demo remembers by default: enough for any test or
/// bench, and a bound on its memory however long it runs.
pub const LEDGER_SIZE: usize = 20_000;

/// What the demo remembers, kept small: a long run remembers
/// [`LEDGER_SIZE`] keys and orders, and each costs a few hundred bytes.
#[derive(Default)]
struct Ledger {
    /// Keys in the order first seen, to forget the oldest.
    key_order: VecDeque<Arc<str>>,
    /// Each idempotency key: how often it was seen, and its first answer.
    keys: HashMap<Arc<str>, Seen>,
    /// Orders in the order first seen.
    order_order: VecDeque<Arc<str>>,
    /// Effects applied per order and kind.
    orders: HashMap<Arc<str>, Vec<(Arc<str>, u32)>>,
    /// Effects applied, by kind (`reserve`, `pay`, ...); its keys are the
    /// kinds the orders' entries share.
    effects: BTreeMap<Arc<str>, u64>,
    next_id: u64,
}

#[derive(Default)]
struct Seen {
    times: u32,
    /// The status and JSON text of the first answer.
    answer: Option<(u16, Box<str>)>,
}

impl Ledger {
    /// The shared name of an effect's kind (orders name it without a copy of their own).
    fn kind(&mut self, kind: &str) -> Arc<str> {
        match self.effects.get_key_value(kind) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = kind.into();
                self.effects.insert(k.clone(), 0);
                k
            }
        }
    }

    /// Counts a sighting of idempotency key `k`, remembering a new one (the
    /// oldest forgotten past `size`); the key's first answer, if it has one.
    fn sighted(&mut self, k: &str, size: usize) -> Option<(u16, Box<str>)> {
        if !self.keys.contains_key(k) {
            let key: Arc<str> = k.into();
            self.key_order.push_back(key.clone());
            self.keys.insert(key, Seen::default());
            while self.key_order.len() > size {
                if let Some(old) = self.key_order.pop_front() {
                    self.keys.remove(&old);
                }
            }
        }
        let seen = self.keys.get_mut(k)?;
        seen.times += 1;
        seen.answer.clone()
    }

    /// Counts an effect applied, and the order's share of it.
    fn applied(&mut self, kind: &str, order: Option<&str>, size: usize) {
        let kind = self.kind(kind);
        *self.effects.entry(kind.clone()).or_default() += 1;
        let Some(o) = order else { return };
        let counts = match self.orders.get_mut(o) {
            Some(counts) => counts,
            None => {
                let o: Arc<str> = o.into();
                self.order_order.push_back(o.clone());
                while self.order_order.len() > size {
                    if let Some(old) = self.order_order.pop_front() {
                        self.orders.remove(&old);
                    }
                }
                self.orders.entry(o).or_default()
            }
        };
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
}

struct Demo {
    config: DemoConfig,
    ledger: Mutex<Ledger>,
}

type Shared = Arc<Demo>;

#[derive(Deserialize)]
struct Order {
    order_id: String,
    #[serde(default)]
    amount: Option<f64>,
}

/// Applies an effect once per idempotency key; `make` computes the answer the first time.
fn once(
    demo: &Demo,
    headers: &HeaderMap,
    kind: &str,
    order: Option<&str>,
    make: impl FnOnce(u64) -> (u16, Value),
) -> Response {
    let key = headers.get("Idempotency-Key").and_then(|v| v.to_str().ok());
    let mut l = demo
        .ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let size = demo.config.ledger_size.max(1);
    if let Some(k) = key {
        if let Some((status, body)) = l.sighted(k, size) {
            return reply_text(status, body.into());
        }
    }
    l.next_id += 1;
    let (status, body) = make(l.next_id);
    if (200..300).contains(&status) {
        l.applied(kind, order, size);
    }
    let body = body.to_string();
    if let Some(seen) = key.and_then(|k| l.keys.get_mut(k)) {
        seen.answer = Some((status, body.as_str().into()));
    }
    reply_text(status, body)
}

fn reply_text(status: u16, body: String) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
        .content_type("application/json; charset=utf-8")
        .body(body)
}

fn reply(status: u16, body: Value) -> Response {
    reply_text(status, body.to_string())
}

async fn pause(demo: &Demo) {
    if !demo.config.latency.is_zero() {
        tokio::time::sleep(demo.config.latency).await;
    }
}

#[handler]
async fn reserve(Data(demo): Data<&Shared>, headers: &HeaderMap, Json(o): Json<Order>) -> Response {
    pause(demo).await;
    once(demo, headers, "reserve", Some(&o.order_id), |n| {
        (
            201,
            json!({"reservation_id": format!("res-{n}"), "order_id": o.order_id}),
        )
    })
}

#[handler]
async fn release(Data(demo): Data<&Shared>, headers: &HeaderMap, Json(o): Json<Order>) -> Response {
    pause(demo).await;
    once(demo, headers, "release", Some(&o.order_id), |_| {
        (200, json!({"released": true, "order_id": o.order_id}))
    })
}

#[handler]
async fn pay(Data(demo): Data<&Shared>, headers: &HeaderMap, Json(o): Json<Order>) -> Response {
    pause(demo).await;
    let limit = demo.config.payment_limit;
    let amount = o.amount.unwrap_or(0.0);
    if amount > limit {
        return once(demo, headers, "decline", Some(&o.order_id), |_| {
            (
                402,
                json!({"error": "declined", "detail": format!("amount {amount} is over the limit {limit}")}),
            )
        });
    }
    once(demo, headers, "pay", Some(&o.order_id), |n| {
        (
            201,
            json!({"payment_id": format!("pay-{n}"), "amount": amount}),
        )
    })
}

#[handler]
async fn refund(Data(demo): Data<&Shared>, headers: &HeaderMap, Json(o): Json<Order>) -> Response {
    pause(demo).await;
    once(demo, headers, "refund", Some(&o.order_id), |n| {
        (
            200,
            json!({"refund_id": format!("ref-{n}"), "order_id": o.order_id}),
        )
    })
}

#[handler]
async fn ship(Data(demo): Data<&Shared>, headers: &HeaderMap, Json(o): Json<Order>) -> Response {
    pause(demo).await;
    once(demo, headers, "ship", Some(&o.order_id), |n| {
        (
            201,
            json!({"shipment_id": format!("ship-{n}"), "order_id": o.order_id}),
        )
    })
}

/// `POST /demo/{collection path}`: creates a record, e.g. `POST /demo/ledger/holds`
/// answers `{"id": "hold-1", "hold_id": "hold-1"}`.
/// Whether a request asks the demo to refuse it: a path segment, or a
/// top-level text field of the body, that starts with `unavailable` (how
/// examples and tests reach a failure path).
fn unavailable(path: &str, body: Option<&Value>) -> bool {
    let marked = |s: &str| s.starts_with("unavailable");
    path.split('/').any(marked)
        || body
            .and_then(Value::as_object)
            .is_some_and(|o| o.values().filter_map(Value::as_str).any(marked))
}

#[handler]
async fn create_record(
    Data(demo): Data<&Shared>,
    headers: &HeaderMap,
    Path(path): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    pause(demo).await;
    if unavailable(&path, body.as_ref().map(|b| &b.0)) {
        return reply(
            409,
            json!({"error": "unavailable", "detail": format!("{path} is not available")}),
        );
    }
    let collection = path.rsplit('/').next().unwrap_or_default();
    let singular = collection
        .strip_suffix('s')
        .unwrap_or(collection)
        .to_string();
    once(demo, headers, &path, None, |n| {
        let id = format!("{singular}-{n}");
        (201, json!({"id": id, format!("{singular}_id"): id}))
    })
}

/// `DELETE /demo/{collection path}/{id}`, e.g. `DELETE /demo/travel/hotels/bookings/t-1`.
#[handler]
async fn delete_record(
    Data(demo): Data<&Shared>,
    headers: &HeaderMap,
    Path(path): Path<String>,
) -> Response {
    pause(demo).await;
    let (collection, id) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
    once(demo, headers, &format!("{collection}:delete"), None, |_| {
        (200, json!({"deleted": id}))
    })
}

#[handler]
async fn stats(Data(demo): Data<&Shared>) -> Json<Value> {
    let l = demo
        .ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let orders: serde_json::Map<String, Value> = l
        .orders
        .iter()
        .map(|(o, counts)| {
            let counts = counts.iter().map(|(k, n)| (k.to_string(), json!(n)));
            (o.to_string(), Value::Object(counts.collect()))
        })
        .collect();
    let keys: serde_json::Map<String, Value> = l
        .keys
        .iter()
        .map(|(k, seen)| (k.to_string(), json!(seen.times)))
        .collect();
    let effects: serde_json::Map<String, Value> = l
        .effects
        .iter()
        .map(|(k, n)| (k.to_string(), json!(n)))
        .collect();
    Json(json!({"effects": effects, "orders": orders, "keys": keys}))
}

/// The demo services, to nest under `/demo`.
pub fn routes(config: DemoConfig) -> impl poem::Endpoint {
    let demo: Shared = Arc::new(Demo {
        config,
        ledger: Mutex::default(),
    });
    Route::new()
        .at("/inventory/reservations", post(reserve))
        .at("/inventory/releases", post(release))
        .at("/payments", post(pay))
        .at("/refunds", post(refund))
        .at("/shipments", post(ship))
        .at("/stats", get(stats))
        .at("/*path", post(create_record).delete(delete_record))
        .data(demo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_forgets_the_oldest_keys_and_orders() {
        let demo = Demo {
            config: DemoConfig {
                ledger_size: 3,
                ..DemoConfig::default()
            },
            ledger: Mutex::default(),
        };
        for i in 0..10 {
            let mut headers = HeaderMap::new();
            headers.insert("Idempotency-Key", format!("k-{i}").parse().unwrap());
            let order = format!("o-{i}");
            once(&demo, &headers, "pay", Some(&order), |n| {
                (200, json!({"n": n}))
            });
            // a repeat within the window is still answered from the ledger
            once(&demo, &headers, "pay", Some(&order), |_| {
                panic!("applied twice")
            });
        }
        let l = demo.ledger.lock().unwrap();
        assert_eq!(l.keys.len(), 3);
        assert_eq!(l.key_order.len(), 3);
        assert_eq!(l.orders.len(), 3);
        assert_eq!(l.order_order.len(), 3);
        assert_eq!(l.keys.get("k-9").map(|s| s.times), Some(2));
        assert!(!l.keys.contains_key("k-0"));
        assert_eq!(l.effects.get("pay"), Some(&10));
        assert_eq!(
            l.orders.get("o-9").map(Vec::as_slice),
            Some(&[("pay".into(), 1)][..])
        );
    }
}
