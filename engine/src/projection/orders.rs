//! The `orders` read model: one row per instance of the [`ORDER_WORKFLOW`],
//! keyed by its input's `order_id`, with customer, amount, items and an
//! order status that follows the steps `reserve`, `pay` and `ship`.
//!
//! It is the demo domain's knowledge (the workflow `order`, its steps), kept
//! here: the generic projection only hands it each event ([`order_change`])
//! and empties its table on a rebuild.

use serde::Serialize;
use uuid::Uuid;

use super::fold::Change;
use super::sql::{corrupt, Arg, Columns};
use super::{json_column, page_end, Cursor, Page, Projections};
use crate::saga::{Event, Timestamp};
use crate::store::StoreError;

/// The workflow whose instances are orders.
pub const ORDER_WORKFLOW: &str = "order";
/// The order status each step's success brings.
const ORDER_STEPS: [(&str, &str); 3] = [
    ("reserve", "reserved"),
    ("pay", "paid"),
    ("ship", "shipped"),
];

/// A row of `orders`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderRow {
    pub order_id: String,
    pub instance_id: Uuid,
    pub customer_id: String,
    pub amount: f64,
    pub items: serde_json::Value,
    /// `pending`, `reserved`, `paid`, `shipped`, `compensated`, `failed` or `cancelled`.
    pub status: String,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Projections {
    /// An order by its id.
    pub async fn order(&self, order_id: &str) -> Result<Option<OrderRow>, StoreError> {
        let rows = self
            .db
            .fetch(
                &format!("{ORDER_COLUMNS} WHERE o.order_id = $1"),
                &[order_id.into()],
                order_row,
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// A customer's orders, newest first, one page at a time.
    pub async fn customer_orders(
        &self,
        customer_id: &str,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<OrderRow>, StoreError> {
        let (sql, args) = match after {
            None => (
                format!("{ORDER_COLUMNS} WHERE o.customer_id = $1 ORDER BY o.created_at DESC, o.order_id DESC LIMIT $2"),
                vec![customer_id.into(), (i64::from(limit) + 1).into()],
            ),
            Some(c) => (
                format!(
                    "{ORDER_COLUMNS} WHERE o.customer_id = $1 AND (o.created_at < $2 OR (o.created_at = $2 AND o.order_id < $3)) \
                     ORDER BY o.created_at DESC, o.order_id DESC LIMIT $4"
                ),
                vec![
                    customer_id.into(),
                    (c.at as i64).into(),
                    (&c.id).into(),
                    (i64::from(limit) + 1).into(),
                ],
            ),
        };
        let mut items = self.db.fetch(&sql, &args, order_row).await?;
        let next = page_end(&mut items, limit, |o| Cursor {
            at: o.created_at.millis(),
            id: o.order_id.clone(),
        });
        Ok(Page { items, next })
    }
}

/// An order's instance is named by its row number (ADR 21): its id, and the
/// order's amount and items, come from the instance's row (its input).
const ORDER_COLUMNS: &str =
    "SELECT o.order_id, i.id AS instance_id, o.customer_id, i.input, o.status, o.error, \
     o.created_at, o.updated_at FROM orders o JOIN saga_instances i ON i.seq = o.instance_seq";

fn order_row(r: &dyn Columns) -> Result<OrderRow, StoreError> {
    let mut input = json_column(r, "input")?;
    Ok(OrderRow {
        order_id: r.text("order_id")?,
        instance_id: Uuid::parse_str(&r.text("instance_id")?).map_err(corrupt)?,
        customer_id: r.text("customer_id")?,
        // an order is made only from an input with a numeric amount
        amount: input["amount"]
            .as_f64()
            .ok_or_else(|| corrupt("an order's input without a numeric amount"))?,
        items: input["items"].take(),
        status: r.text("status")?,
        error: r.opt_text("error")?,
        created_at: Timestamp(r.int("created_at")? as u64),
        updated_at: Timestamp(r.int("updated_at")? as u64),
    })
}

/// The `orders` row's share of an event (at log position `pos`).
pub(super) fn order_change(row: &mut Change, pos: i64, event: &Event) {
    let (status, error, at): (&str, Option<&str>, Timestamp) = match event {
        Event::SagaStarted {
            workflow,
            input,
            started_at,
            ..
        } if workflow == ORDER_WORKFLOW => {
            // the amount is read back from the input (`order_row`): it must be a number
            let (Some(order_id), Some(customer_id), Some(_)) = (
                input["order_id"].as_str(),
                input["customer_id"].as_str(),
                input["amount"].as_f64(),
            ) else {
                return;
            };
            let at = Arg::Int(started_at.millis() as i64);
            row.create(
                pos,
                vec![
                    ("order_id", order_id.into()),
                    ("customer_id", customer_id.into()),
                    ("status", "pending".into()),
                    ("created_at", at.clone()),
                    ("updated_at", at),
                ],
            );
            return;
        }
        Event::StepSucceeded { name, at, .. } => {
            match ORDER_STEPS.iter().find(|(step, _)| step == name) {
                Some((_, status)) => (*status, None, *at),
                None => return,
            }
        }
        Event::StepFailed { error, at, .. } => ("", Some(error.as_str()), *at),
        Event::SagaCompleted { at, .. } => ("shipped", None, *at),
        Event::SagaCompensated { at } => ("compensated", None, *at),
        Event::SagaFailed { reason, at } => ("failed", Some(reason.as_str()), *at),
        Event::SagaCancelled { at } => ("cancelled", None, *at),
        _ => return,
    };
    if !status.is_empty() {
        row.set(pos, "status", status.into());
    }
    if let Some(e) = error {
        row.set(pos, "error", e.into());
    }
    row.set(pos, "updated_at", Arg::Int(at.millis() as i64));
}
