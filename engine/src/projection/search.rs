//! Searchable input fields. A workflow names the input fields listings may
//! search by (`search: [customer_id]`); the registry records them in its
//! `WorkflowPublished` event, and this projection keeps:
//!
//! - `search_fields`: which fields each workflow version declares;
//! - `instance_search`: one row per value of those fields in each
//!   instance's input, keyed `(field, value, started_at, instance_id)`, so a
//!   search reads one range of the key, newest first, at any table size.
//!
//! Values are kept as text: a string as itself, `true`/`false`, and a number
//! in one canonical spelling ([`number_text`]), so `5000`, `5000.0` and
//! `5e3` are one value. Each scalar of an array is a value of its own (a
//! `tags` field finds every instance with that tag). Objects, `null`, and
//! strings longer than [`MAX_VALUE`] bytes are not indexed.

use std::collections::HashMap;
use std::sync::Arc;

use super::sql::{Arg, Stmt};
use super::{stmt, Projections};
use crate::store::{RecordedEvent, StoreError};

/// The longest value indexed, in bytes; a search for a longer one finds nothing.
pub(super) const MAX_VALUE: usize = 256;
/// At most this many values of one array are indexed.
const MAX_ELEMENTS: usize = 64;

/// The fields each `(workflow, version)` declares, as the projection has learned them.
type ByVersion = HashMap<(String, u32), Arc<[String]>>;
pub(super) type Declared = std::sync::Mutex<ByVersion>;

/// `(workflow, version, fields)` of a `WorkflowPublished` event.
pub(super) fn published(rec: &RecordedEvent) -> Option<(String, u32, Vec<String>)> {
    #[derive(serde::Deserialize)]
    struct Published {
        name: String,
        version: u32,
        #[serde(default)]
        search: Vec<String>,
    }
    let p: Published = serde::Deserialize::deserialize(&*rec.data).ok()?;
    Some((p.name, p.version, p.search))
}

/// The statements that record a version's declared fields.
pub(super) fn declare(workflow: &str, version: u32, fields: &[String]) -> Vec<Stmt> {
    fields
        .iter()
        .map(|f| {
            stmt(
                "INSERT INTO search_fields (workflow, version, field) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                vec![workflow.into(), i64::from(version).into(), f.into()],
            )
        })
        .collect()
}

/// The `instance_search` rows of one instance's input: `(field, value,
/// started_at, instance_id, workflow)` for each value of each declared field.
pub(super) fn rows(
    id: &str,
    workflow: &str,
    started_at: i64,
    input: &serde_json::Value,
    fields: &[String],
) -> Vec<[Arg; 5]> {
    let mut out = Vec::new();
    for field in fields {
        for value in values(input, field) {
            out.push([
                field.into(),
                value.into(),
                started_at.into(),
                id.into(),
                workflow.into(),
            ]);
        }
    }
    out
}

/// The indexed values at a dotted `path` of `input`.
pub(super) fn values(input: &serde_json::Value, path: &str) -> Vec<String> {
    let mut node = input;
    for part in path.split('.') {
        match node.get(part) {
            Some(next) => node = next,
            None => return Vec::new(),
        }
    }
    match node {
        serde_json::Value::Array(items) => {
            let mut out: Vec<String> = items.iter().take(MAX_ELEMENTS).filter_map(scalar).collect();
            out.sort();
            out.dedup();
            out
        }
        v => scalar(v).into_iter().collect(),
    }
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if s.len() <= MAX_VALUE => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => n.as_f64().map(number_text),
        _ => None,
    }
}

/// One spelling for every way of writing a number: integers without a
/// fraction (`5000` for `5000.0`), others as the shortest text that reads
/// back as the same double.
pub(super) fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// The indexed values a searched text matches: itself, and, when it reads as
/// a number, that number's canonical spelling.
pub(super) fn candidates(value: &str) -> Vec<String> {
    let mut out = vec![value.to_string()];
    if let Some(n) = value.parse::<f64>().ok().filter(|n| n.is_finite()) {
        let canonical = number_text(n);
        if canonical != value {
            out.push(canonical);
        }
    }
    out
}

/// `column = $n` or `column IN ($n, $m)` for the candidates of `value`.
pub(super) fn matches(column: &str, value: &str, args: &mut Vec<Arg>) -> String {
    let mut params = Vec::new();
    for c in candidates(value) {
        args.push(c.into());
        params.push(format!("${}", args.len()));
    }
    if params.len() == 1 {
        format!("{column} = {}", params[0])
    } else {
        format!("{column} IN ({})", params.join(", "))
    }
}

impl Projections {
    /// The fields `(workflow, version)` declares: from memory, else from
    /// `search_fields` (another replica sharing the read models may have
    /// applied the version's `WorkflowPublished`).
    pub(super) async fn declared(
        &self,
        workflow: &str,
        version: u32,
    ) -> Result<Arc<[String]>, StoreError> {
        let key = (workflow.to_string(), version);
        if let Some(f) = self.lock_declared().get(&key) {
            return Ok(f.clone());
        }
        let fields: Arc<[String]> = self
            .db
            .fetch(
                "SELECT field FROM search_fields WHERE workflow = $1 AND version = $2 ORDER BY field",
                &[workflow.into(), i64::from(version).into()],
                |r| r.text("field"),
            )
            .await?
            .into();
        self.lock_declared().insert(key, fields.clone());
        Ok(fields)
    }

    pub(super) fn learn_declared(&self, workflow: String, version: u32, fields: &[String]) {
        self.lock_declared()
            .insert((workflow, version), fields.to_vec().into());
    }

    pub(super) fn lock_declared(&self) -> std::sync::MutexGuard<'_, ByVersion> {
        self.declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The workflows that declare `field` searchable in some version
    /// (only `workflow`, when given).
    pub async fn declaring(
        &self,
        field: &str,
        workflow: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let mut args: Vec<Arg> = vec![field.into()];
        let mut sql = String::from("SELECT DISTINCT workflow FROM search_fields WHERE field = $1");
        if let Some(w) = workflow {
            args.push(w.into());
            sql += " AND workflow = $2";
        }
        sql += " ORDER BY workflow";
        self.db.fetch(&sql, &args, |r| r.text("workflow")).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_are_found_by_path_and_spelt_one_way() {
        let input = json!({
            "customer_id": "c-1",
            "amount": 5000.0,
            "vip": true,
            "address": {"city": "Oslo", "zip": null},
            "tags": ["b", "a", "b", 7, {"x": 1}],
            "long": "x".repeat(MAX_VALUE + 1),
        });
        assert_eq!(values(&input, "customer_id"), ["c-1"]);
        assert_eq!(values(&input, "amount"), ["5000"]);
        assert_eq!(values(&input, "vip"), ["true"]);
        assert_eq!(values(&input, "address.city"), ["Oslo"]);
        assert!(values(&input, "address.zip").is_empty());
        assert!(
            values(&input, "address").is_empty(),
            "objects are not values"
        );
        assert!(values(&input, "address.city.more").is_empty());
        assert!(values(&input, "missing").is_empty());
        assert_eq!(values(&input, "tags"), ["7", "a", "b"]);
        assert!(values(&input, "long").is_empty());
    }

    #[test]
    fn numbers_have_one_spelling() {
        assert_eq!(number_text(5000.0), "5000");
        assert_eq!(number_text(-3.0), "-3");
        assert_eq!(number_text(10.5), "10.5");
        assert_eq!(number_text(0.1), "0.1");
        assert_eq!(candidates("5e3"), ["5e3", "5000"]);
        assert_eq!(candidates("5000"), ["5000"]);
        assert_eq!(candidates("c-1"), ["c-1"]);
        assert_eq!(candidates("NaN"), ["NaN"]);
        let mut args = Vec::new();
        assert_eq!(matches("s.value", "42.0", &mut args), "s.value IN ($1, $2)");
        assert_eq!(matches("s.value", "c-1", &mut args), "s.value = $3");
    }
}
