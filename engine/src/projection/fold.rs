//! A batch of events becomes few statements. Each instance's events in the
//! batch fold into one change per table: the columns its events set, the
//! latest value winning, written once and guarded by the row's
//! `last_position`. A saga whose events all fall in one batch costs one
//! upsert of `saga_instances`, an insert (and a no-op update) of `orders`
//! and its share of one multi-row insert of `instance_search`, where it
//! cost one statement per event before. Each statement is work in the
//! database (and on PostgreSQL a round trip); on SQLite the whole
//! transaction is one hand-off to the writing thread (`writer.rs`).
//!
//! The rows come out as applying the events one by one would leave them,
//! also when a batch is applied again or a replica sharing the read models
//! applies an overlapping one: a column's latest value in the batch is its
//! value at the batch's last event, whatever part of the batch the row has
//! already seen.

use std::collections::HashMap;

use super::sql::{Arg, Stmt};
use super::stmt;

/// Rows of one multi-row insert into `instance_search` (five arguments each).
const SEARCH_ROWS_PER_INSERT: usize = 500;

/// How a table's row names its instance, given the instance's id as `$1`.
#[derive(Clone, Copy)]
enum Key {
    /// `saga_instances`: by the id itself.
    Id,
    /// The other tables: by the instance's row number (ADR 21), looked up by id.
    Seq,
}

impl Key {
    fn column(self) -> &'static str {
        match self {
            Key::Id => "id",
            Key::Seq => "instance_seq",
        }
    }

    /// What the column equals.
    fn value(self) -> &'static str {
        match self {
            Key::Id => "$1",
            Key::Seq => "(SELECT seq FROM saga_instances WHERE id = $1)",
        }
    }
}

/// One table's pending change to one instance's row.
#[derive(Default)]
pub(super) struct Change {
    /// The row's columns when the batch holds the event that creates it.
    insert: Option<Vec<(&'static str, Arg)>>,
    /// What later events set, the latest value of each column.
    set: Vec<(&'static str, Arg)>,
    /// The position of the last event that changed the row.
    last: i64,
}

impl Change {
    pub fn create(&mut self, pos: i64, columns: Vec<(&'static str, Arg)>) {
        self.insert = Some(columns);
        self.set.clear();
        self.last = pos;
    }

    pub fn set(&mut self, pos: i64, column: &'static str, value: Arg) {
        match self.set.iter_mut().find(|(c, _)| *c == column) {
            Some(slot) => slot.1 = value,
            None => self.set.push((column, value)),
        }
        self.last = pos;
    }

    fn touched(&self) -> bool {
        self.insert.is_some() || !self.set.is_empty()
    }

    /// The insert's columns with the later values laid over them.
    fn row(&self) -> Option<Vec<(&'static str, Arg)>> {
        let mut row = self.insert.clone()?;
        for (c, v) in &self.set {
            match row.iter_mut().find(|(rc, _)| rc == c) {
                Some(slot) => slot.1 = v.clone(),
                None => row.push((c, v.clone())),
            }
        }
        Some(row)
    }

    /// `UPDATE table SET … WHERE key = id AND last_position < last`, the
    /// row found by `key` ([`Key`]).
    fn update(&self, table: &str, key: Key, id: &str) -> Option<Stmt> {
        if self.set.is_empty() {
            return None;
        }
        let mut args: Vec<Arg> = vec![id.into(), self.last.into()];
        let mut sets = Vec::new();
        for (c, v) in &self.set {
            args.push(v.clone());
            sets.push(format!("{c} = ${}", args.len()));
        }
        Some(stmt(
            &format!(
                "UPDATE {table} SET {}, last_position = $2 WHERE {} = {} AND last_position < $2",
                sets.join(", "),
                key.column(),
                key.value()
            ),
            args,
        ))
    }

    /// `INSERT INTO table (key, last_position, …)` of the row, and what to do
    /// on a conflict. A row keyed by the instance's number takes it from the
    /// instance's row, and is not made without one.
    fn insert(&self, table: &str, key: Key, id: &str, on_conflict: &str) -> Option<Stmt> {
        let row = self.row()?;
        let mut args: Vec<Arg> = vec![id.into(), self.last.into()];
        let mut columns = vec![key.column(), "last_position"];
        for (c, v) in row {
            columns.push(c);
            args.push(v);
        }
        let params: Vec<String> = (2..=args.len()).map(|i| format!("${i}")).collect();
        let source = match key {
            Key::Id => format!("VALUES ($1, {})", params.join(", ")),
            // (`AND true`: SQLite's parser needs a WHERE before an upsert clause)
            Key::Seq => format!(
                "SELECT seq, {} FROM saga_instances WHERE id = $1 AND true",
                params.join(", ")
            ),
        };
        Some(stmt(
            &format!(
                "INSERT INTO {table} ({}) {source} {on_conflict}",
                columns.join(", "),
            ),
            args,
        ))
    }

    /// `saga_instances`: one upsert when the batch started the instance (a row
    /// that exists takes what the batch set, if it has not seen it), else one update.
    fn instance_statements(&self, id: &str, out: &mut Vec<Stmt>) {
        const TABLE: &str = "saga_instances";
        if self.insert.is_none() {
            out.extend(self.update(TABLE, Key::Id, id));
            return;
        }
        let on_conflict = if self.set.is_empty() {
            "ON CONFLICT (id) DO NOTHING".to_string()
        } else {
            let sets: Vec<String> = self
                .set
                .iter()
                .map(|(c, _)| format!("{c} = excluded.{c}"))
                .collect();
            format!(
                "ON CONFLICT (id) DO UPDATE SET {}, last_position = excluded.last_position \
                 WHERE {TABLE}.last_position < excluded.last_position",
                sets.join(", ")
            )
        };
        out.extend(self.insert(TABLE, Key::Id, id, &on_conflict));
    }

    /// `orders`: the first instance of an order id keeps it, so a conflict
    /// (on the order id, or a row of this instance already there) inserts
    /// nothing, and the update brings an existing row of this instance forward.
    fn order_statements(&self, id: &str, out: &mut Vec<Stmt>) {
        out.extend(self.insert("orders", Key::Seq, id, "ON CONFLICT DO NOTHING"));
        out.extend(self.update("orders", Key::Seq, id));
    }
}

/// What one instance's events in the batch change.
#[derive(Default)]
pub(super) struct Instance {
    pub row: Change,
    pub order: Change,
}

/// The folded changes of a batch, in the order the instances first appear.
#[derive(Default)]
pub(super) struct Batch {
    at: HashMap<String, usize>,
    instances: Vec<(String, Instance)>,
    /// `(field, value, started_at, instance_id, workflow)` rows.
    search: Vec<[Arg; 5]>,
}

impl Batch {
    pub fn instance(&mut self, id: &str) -> &mut Instance {
        let i = match self.at.get(id) {
            Some(&i) => i,
            None => {
                let i = self.instances.len();
                self.instances.push((id.to_string(), Instance::default()));
                self.at.insert(id.to_string(), i);
                i
            }
        };
        &mut self.instances[i].1
    }

    pub fn search(&mut self, rows: impl IntoIterator<Item = [Arg; 5]>) {
        self.search.extend(rows);
    }

    /// Leaves out instance `id`'s search values folded so far.
    pub fn drop_search_of(&mut self, id: &str) {
        self.search
            .retain(|row| !matches!(&row[3], Arg::Text(i) if i == id));
    }

    /// Appends the statements of everything folded so far, and starts afresh.
    pub fn flush_into(&mut self, out: &mut Vec<Stmt>) {
        for (id, change) in self.instances.drain(..) {
            if change.row.touched() {
                change.row.instance_statements(&id, out);
            }
            if change.order.touched() {
                change.order.order_statements(&id, out);
            }
        }
        self.at.clear();
        for chunk in self.search.chunks(SEARCH_ROWS_PER_INSERT) {
            let mut args = Vec::with_capacity(chunk.len() * 5);
            let mut values = Vec::with_capacity(chunk.len());
            for row in chunk {
                let n = args.len();
                values.push(format!(
                    "(${}, ${}, ${}, ${}, ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5
                ));
                args.extend(row.iter().cloned());
            }
            // each row takes its instance's number from the instance's row
            // (written before, in this transaction); `WHERE true` as above
            out.push(stmt(
                &format!(
                    "INSERT INTO instance_search (field, value, started_at, instance_seq, workflow) \
                     SELECT v.column1, v.column2, v.column3, i.seq, v.column5 \
                     FROM (VALUES {}) v JOIN saga_instances i ON i.id = v.column4 \
                     WHERE true ON CONFLICT DO NOTHING",
                    values.join(", ")
                ),
                args,
            ));
        }
        self.search.clear();
    }
}
