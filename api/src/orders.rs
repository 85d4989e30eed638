//! Orders: the order pipeline as its users see it. Creating an order starts
//! the `order` workflow; status and listings come from the `orders` read model.

use std::time::Duration;

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sagaflow_engine::projection::{Cursor, OrderRow, ORDER_WORKFLOW};
use sagaflow_engine::runtime::{keyed_id, Runtime, RuntimeError};

use crate::auth::{Auth, Need};
use crate::problem::ApiError;
use crate::types::{status, OrderStatus, Time};
use crate::Tag;

/// The Idempotency-Key an order's saga is started with.
fn order_key(order_id: &str) -> String {
    format!("order:{order_id}")
}

/// The characters an order id keeps as they are in a URL path segment
/// (RFC 3986's unreserved set); every other byte of its UTF-8 is
/// percent-encoded, so any order id makes a valid `Location` header.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The path of an order's status, as its `Location` header gives it.
fn order_path(order_id: &str) -> String {
    format!(
        "/orders/{}",
        percent_encoding::utf8_percent_encode(order_id, PATH_SEGMENT)
    )
}

/// An id that a URL path can name: anything but `.` and `..`, which clients
/// resolve as dot segments (RFC 3986, section 5.2.4), also percent-encoded.
/// (By hand: poem-openapi's `pattern` validator compiles its regular
/// expression on every check.)
struct NameableInPath;

impl std::fmt::Display for NameableInPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("`.` and `..` are not ids: a URL path cannot name them")
    }
}

impl<T: AsRef<str>> poem_openapi::validation::Validator<T> for NameableInPath {
    fn check(&self, value: &T) -> bool {
        !matches!(value.as_ref(), "." | "..")
    }
}

/// How long a request that asks for its own writes waits for the read models.
pub(crate) const CONSISTENCY_WAIT: Duration = Duration::from_secs(5);

/// A new order.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(example)]
pub struct NewOrder {
    /// The order's id; creating the same order again returns the first one.
    /// Any text but `.` and `..`, which a URL path cannot name: clients read
    /// `/orders/..` as `/` (RFC 3986, dot segments), also written `%2E%2E`.
    #[oai(validator(min_length = 1, max_length = 200, custom = "NameableInPath"))]
    pub order_id: String,
    /// The customer's id; any text but `.` and `..`, as the order id
    /// (`/customers/{customer_id}/orders` lists the customer's orders).
    #[oai(validator(min_length = 1, max_length = 200, custom = "NameableInPath"))]
    pub customer_id: String,
    #[oai(validator(min_items = 1, max_items = 1000))]
    pub items: Vec<OrderItem>,
    #[oai(validator(minimum(value = "0")))]
    pub amount: f64,
}

impl poem_openapi::types::Example for NewOrder {
    fn example() -> Self {
        NewOrder {
            order_id: "o-1001".into(),
            customer_id: "c-42".into(),
            items: vec![OrderItem {
                sku: "book".into(),
                qty: 2,
            }],
            amount: 59.9,
        }
    }
}

#[derive(Object, serde::Serialize, serde::Deserialize)]
#[oai(skip_serializing_if_is_none)]
pub struct OrderItem {
    #[oai(validator(min_length = 1, max_length = 200))]
    pub sku: String,
    #[oai(validator(minimum(value = "1")))]
    pub qty: u32,
}

/// An order as the read model holds it.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Order {
    pub order_id: String,
    /// The saga instance that runs the order (`/instances/{id}`).
    pub instance_id: uuid::Uuid,
    pub customer_id: String,
    pub amount: f64,
    pub items: Vec<OrderItem>,
    pub status: OrderStatus,
    /// Why the order did not go through, or the last failure.
    pub error: Option<String>,
    pub created_at: Time,
    pub updated_at: Time,
}

impl TryFrom<OrderRow> for Order {
    type Error = ApiError;

    fn try_from(o: OrderRow) -> Result<Self, ApiError> {
        Ok(Self {
            order_id: o.order_id,
            instance_id: o.instance_id,
            customer_id: o.customer_id,
            amount: o.amount,
            // the order workflow's input schema guarantees the shape
            items: serde_json::from_value(o.items).unwrap_or_default(),
            status: status(&o.status)?,
            error: o.error,
            created_at: o.created_at.into(),
            updated_at: o.updated_at.into(),
        })
    }
}

/// A page of orders.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct OrderPage {
    pub items: Vec<Order>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum CreateOrderResponse {
    /// The order was created and its saga started.
    #[oai(status = 201)]
    Created(Json<Order>, #[oai(header = "Location")] String),
    /// This order was created before (same id and content).
    #[oai(status = 200)]
    Existing(Json<Order>, #[oai(header = "Location")] String),
}

pub struct OrdersApi {
    pub rt: Runtime,
}

/// A listing's cursor, if given; `fits` says whether its key is one of this listing's.
pub(crate) fn parse_cursor(
    cursor: Option<&str>,
    fits: impl Fn(&Cursor) -> bool,
) -> Result<Option<Cursor>, ApiError> {
    cursor
        .filter(|c| !c.is_empty())
        .map(|c| {
            Cursor::decode(c).filter(&fits).ok_or_else(|| {
                ApiError::bad_request(
                    "bad-cursor",
                    format!("`{c}` is not a cursor this service gave out"),
                )
            })
        })
        .transpose()
}

/// Waits, if `wanted`, for the read models to hold every write made before the request.
pub(crate) async fn read_your_writes(rt: &Runtime, wanted: bool) -> Result<(), ApiError> {
    {
        if wanted && !rt.catch_up_read_models(CONSISTENCY_WAIT).await? {
            return Err(ApiError::read_model_behind());
        }
        Ok(())
    }
}

#[OpenApi(tag = "Tag::Orders")]
impl OrdersApi {
    /// Create an order: starts the `order` workflow (reserve stock, take payment, ship).
    ///
    /// The order id is the idempotency key: creating the same order again
    /// (same id, same content) returns it with 200; an order id already in use
    /// with other content, by this operation or by an instance started
    /// otherwise, is refused with 409 `/problems/order-exists`. No second saga
    /// starts for an order id.
    ///
    /// With `wait` (e.g. `30s`, at most `5m`), the answer comes once the
    /// order's saga has ended and the read model shows it, or when the wait is
    /// over: one request creates the order and returns its outcome.
    #[oai(path = "/orders", method = "post", operation_id = "create_order")]
    async fn create(
        &self,
        auth: Auth,
        wait: Query<Option<String>>,
        body: Json<NewOrder>,
    ) -> Result<CreateOrderResponse, ApiError> {
        auth.require(Need::Start)?;
        let wait = crate::instances::parse_wait(wait.0.as_deref())?;
        let order = body.0;
        let input = serde_json::json!({
            "order_id": order.order_id,
            "customer_id": order.customer_id,
            "items": order.items,
            "amount": order.amount,
        });
        let location = order_path(&order.order_id);
        let taken = || ApiError::order_exists(&order.order_id);
        // An order id in use by any instance (whatever started it) is not started again.
        read_your_writes(&self.rt, true).await?;
        if let Some(mut row) = self.rt.order(&order.order_id).await? {
            let existing = self.rt.get(row.instance_id).await?;
            if existing.input != input {
                return Err(taken());
            }
            if let Some(d) = wait {
                if self
                    .rt
                    .wait(row.instance_id, d)
                    .await?
                    .finished_at
                    .is_some()
                {
                    read_your_writes(&self.rt, true).await?;
                    row = self.rt.order(&order.order_id).await?.ok_or_else(taken)?;
                }
            }
            return Ok(CreateOrderResponse::Existing(
                Json(row.try_into()?),
                location,
            ));
        }
        let started = match self
            .rt
            .start(
                ORDER_WORKFLOW,
                None,
                input,
                Some(order_key(&order.order_id)),
            )
            .await
        {
            Err(RuntimeError::IdempotencyMismatch(_)) => return Err(taken()),
            other => other?,
        };
        if let Some(d) = wait {
            self.rt.wait(started.id, d).await?;
        }
        // the answer shows the order as a following read would
        read_your_writes(&self.rt, true).await?;
        let row = self
            .rt
            .order(&order.order_id)
            .await?
            .filter(|row| row.instance_id == started.id)
            .ok_or_else(taken)?;
        Ok(if started.created {
            CreateOrderResponse::Created(Json(row.try_into()?), location)
        } else {
            CreateOrderResponse::Existing(Json(row.try_into()?), location)
        })
    }

    /// Get an order's status.
    ///
    /// With `wait` (e.g. `30s`, at most `5m`), the answer comes once the
    /// order's saga has ended and the read model shows it (`shipped`,
    /// `compensated`, `failed` or `cancelled`), or when the wait is over.
    #[oai(path = "/orders/:order_id", method = "get", operation_id = "get_order")]
    async fn get(
        &self,
        auth: Auth,
        order_id: Path<String>,
        /// Wait until the read model holds every write made before this request.
        #[oai(default)]
        consistent: Query<bool>,
        wait: Query<Option<String>>,
    ) -> Result<Json<Order>, ApiError> {
        auth.require(Need::Read)?;
        let wait = crate::instances::parse_wait(wait.0.as_deref())?;
        read_your_writes(&self.rt, consistent.0 || wait.is_some()).await?;
        let Some(mut order) = self.rt.order(&order_id).await? else {
            let id = keyed_id(ORDER_WORKFLOW, &order_key(&order_id));
            return Err(match self.rt.why_missing(id).await {
                e @ RuntimeError::Removed { .. } => e.into(),
                _ => ApiError::unknown_order(&order_id),
            });
        };
        if let Some(d) = wait {
            let ended = self.rt.wait(order.instance_id, d).await?;
            if ended.finished_at.is_some() {
                read_your_writes(&self.rt, true).await?;
                order = self
                    .rt
                    .order(&order_id)
                    .await?
                    .ok_or_else(|| ApiError::unknown_order(&order_id))?;
            }
        }
        Ok(Json(order.try_into()?))
    }

    /// A customer's orders, newest first.
    #[oai(
        path = "/customers/:customer_id/orders",
        method = "get",
        operation_id = "list_customer_orders"
    )]
    async fn customer_orders(
        &self,
        auth: Auth,
        customer_id: Path<String>,
        /// From `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// At most this many (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u32>>,
        /// Wait until the read model holds every write made before this request.
        #[oai(default)]
        consistent: Query<bool>,
    ) -> Result<Json<OrderPage>, ApiError> {
        auth.require(Need::Read)?;
        let after = parse_cursor(cursor.0.as_deref(), |_| true)?;
        read_your_writes(&self.rt, consistent.0).await?;
        let page = self
            .rt
            .customer_orders(&customer_id, after.as_ref(), limit.0.unwrap_or(50))
            .await?;
        Ok(Json(OrderPage {
            items: page
                .items
                .into_iter()
                .map(Order::try_from)
                .collect::<Result<_, _>>()?,
            next_cursor: page.next.map(|c| c.encode()),
        }))
    }
}
