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

// ahash: keyed at random per process as std's maps are, and several times
// cheaper on stream names and ids (docs/performance.md, seventh session)
use ahash::AHashMap as HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock};

use super::sql::{Arg, Stmt};

/// Rows of one multi-row insert into `instance_search` (five arguments each),
/// at most. Each number of rows is a statement of its own, kept prepared by
/// the writer: a batch's rows go in inserts of powers of two up to this
/// ([`search_chunks`]), so that a handful of statements serve every batch.
/// One prepared per number of rows, up to 500, held about 8 MiB once
/// batches grew to 50 ms of commits (docs/performance.md, "Read models
/// written less often").
const SEARCH_ROWS_PER_INSERT: usize = 64;

/// The sizes `rows` rows are inserted in: the largest power of two up to
/// [`SEARCH_ROWS_PER_INSERT`] that is left, each time.
fn search_chunks(mut rows: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if rows == 0 {
            return None;
        }
        let size = 1 << rows.min(SEARCH_ROWS_PER_INSERT).ilog2();
        rows -= size;
        Some(size)
    })
}

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

/// The most statement texts each of [`text`] and [`search_insert`] keeps.
const TEXTS_KEPT: usize = 4096;

/// Statement texts by what they are built from.
type Texts<K> = OnceLock<Mutex<HashMap<K, Arc<str>>>>;

/// The text kept in `texts` for `key`, built by `build` the first time.
fn kept<Q>(texts: &Texts<Q::Owned>, key: &Q, build: impl FnOnce() -> String) -> Arc<str>
where
    Q: ToOwned + Hash + Eq + ?Sized,
    Q::Owned: Hash + Eq,
{
    let texts = texts.get_or_init(Mutex::default);
    if let Some(t) = texts.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
        return t.clone();
    }
    let t: Arc<str> = build().into();
    let mut texts = texts.lock().unwrap_or_else(|p| p.into_inner());
    if texts.len() < TEXTS_KEPT {
        texts.insert(key.to_owned(), t.clone());
    }
    t
}

/// The text of a statement of this `shape` (its kind, table and columns, in
/// order), built by `build` the first time. A batch's statements take few
/// shapes (which columns its events set), so formatting each text per
/// statement was work repeated thousands of times a second.
fn text(shape: &[&'static str], build: impl FnOnce() -> String) -> Arc<str> {
    static TEXTS: Texts<Vec<&'static str>> = OnceLock::new();
    kept(&TEXTS, shape, build)
}

/// `$1, $2, …, $n`, from `$first`.
fn params(first: usize, last: usize) -> String {
    (first..=last)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The insert of `rows` rows into `instance_search`, each row taking its
/// instance's number from the instance's row (written before, in the same
/// transaction); built once for each number of rows.
fn search_insert(rows: usize) -> Arc<str> {
    static TEXTS: Texts<usize> = OnceLock::new();
    kept(&TEXTS, &rows, || {
        let values: Vec<String> = (0..rows)
            .map(|r| format!("({})", params(5 * r + 1, 5 * r + 5)))
            .collect();
        // `WHERE true`: SQLite's parser needs a WHERE before an upsert clause
        format!(
            "INSERT INTO instance_search (field, value, started_at, instance_seq, workflow) \
             SELECT v.column1, v.column2, v.column3, i.seq, v.column5 \
             FROM (VALUES {}) v JOIN saga_instances i ON i.id = v.column4 \
             WHERE true ON CONFLICT DO NOTHING",
            values.join(", ")
        )
    })
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
    fn update(&self, table: &'static str, key: Key, id: &str) -> Option<Stmt> {
        if self.set.is_empty() {
            return None;
        }
        let mut args: Vec<Arg> = Vec::with_capacity(2 + self.set.len());
        args.extend([id.into(), self.last.into()]);
        args.extend(self.set.iter().map(|(_, v)| v.clone()));
        let mut shape = vec!["update", table, key.column()];
        shape.extend(self.set.iter().map(|(c, _)| *c));
        let sql = text(&shape, || {
            let sets: Vec<String> = (self.set.iter().enumerate())
                .map(|(i, (c, _))| format!("{c} = ${}", i + 3))
                .collect();
            format!(
                "UPDATE {table} SET {}, last_position = $2 WHERE {} = {} AND last_position < $2",
                sets.join(", "),
                key.column(),
                key.value()
            )
        });
        Some((sql, args))
    }

    /// `INSERT INTO table (key, last_position, …)` of the row, and what to do
    /// on a conflict, which `conflict` names and makes from the columns set
    /// after the insert. A row keyed by the instance's number takes it from
    /// the instance's row, and is not made without one.
    fn insert(
        &self,
        table: &'static str,
        key: Key,
        id: &str,
        conflict: (&'static str, fn(&[&'static str]) -> String),
    ) -> Option<Stmt> {
        let row = self.row()?;
        let mut args: Vec<Arg> = Vec::with_capacity(2 + row.len());
        args.extend([id.into(), self.last.into()]);
        let mut shape = vec!["insert", table, key.column(), conflict.0];
        for (c, v) in row {
            shape.push(c);
            args.push(v);
        }
        let columns = shape.len() - 4;
        shape.push("|");
        shape.extend(self.set.iter().map(|(c, _)| *c));
        let sql = text(&shape, || {
            let params = params(2, columns + 2);
            let source = match key {
                Key::Id => format!("VALUES ($1, {params})"),
                // (`AND true`: SQLite's parser needs a WHERE before an upsert clause)
                Key::Seq => {
                    format!("SELECT seq, {params} FROM saga_instances WHERE id = $1 AND true")
                }
            };
            let set: Vec<&'static str> = self.set.iter().map(|(c, _)| *c).collect();
            let mut names = vec![key.column(), "last_position"];
            names.extend(&shape[4..4 + columns]);
            format!(
                "INSERT INTO {table} ({}) {source} {}",
                names.join(", "),
                (conflict.1)(&set),
            )
        });
        Some((sql, args))
    }

    /// `saga_instances`: one upsert when the batch started the instance (a row
    /// that exists takes what the batch set, if it has not seen it), else one update.
    fn instance_statements(&self, id: &str, out: &mut Vec<Stmt>) {
        const TABLE: &str = "saga_instances";
        if self.insert.is_none() {
            out.extend(self.update(TABLE, Key::Id, id));
            return;
        }
        fn on_conflict(set: &[&'static str]) -> String {
            if set.is_empty() {
                return "ON CONFLICT (id) DO NOTHING".to_string();
            }
            let sets: Vec<String> = set.iter().map(|c| format!("{c} = excluded.{c}")).collect();
            format!(
                "ON CONFLICT (id) DO UPDATE SET {}, last_position = excluded.last_position \
                 WHERE {TABLE}.last_position < excluded.last_position",
                sets.join(", ")
            )
        }
        out.extend(self.insert(TABLE, Key::Id, id, ("upsert", on_conflict)));
    }

    /// `orders`: the first instance of an order id keeps it, so a conflict
    /// (on the order id, or a row of this instance already there) inserts
    /// nothing, and the update brings an existing row of this instance forward.
    fn order_statements(&self, id: &str, out: &mut Vec<Stmt>) {
        fn nothing(_: &[&'static str]) -> String {
            "ON CONFLICT DO NOTHING".to_string()
        }
        out.extend(self.insert("orders", Key::Seq, id, ("nothing", nothing)));
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
        let mut rows = self.search.drain(..);
        for size in search_chunks(rows.len()) {
            let args: Vec<Arg> = rows.by_ref().take(size).flatten().collect();
            out.push((search_insert(size), args));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_rows_go_in_few_sizes_of_insert() {
        assert_eq!(search_chunks(0).count(), 0);
        assert_eq!(search_chunks(7).collect::<Vec<_>>(), [4, 2, 1]);
        assert_eq!(search_chunks(130).collect::<Vec<_>>(), [64, 64, 2]);
        let mut sizes = std::collections::BTreeSet::new();
        for n in 0..=1000 {
            let chunks: Vec<usize> = search_chunks(n).collect();
            assert_eq!(chunks.iter().sum::<usize>(), n);
            sizes.extend(chunks);
        }
        assert_eq!(
            sizes.into_iter().collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 64]
        );
    }

    fn texts(change: &Change) -> Vec<String> {
        let mut out = Vec::new();
        change.instance_statements("i-1", &mut out);
        change.order_statements("i-1", &mut out);
        out.iter().map(|(sql, _)| sql.to_string()).collect()
    }

    #[test]
    fn statements_of_a_shape_share_one_text_and_shapes_do_not_mix() {
        let mut started = Change::default();
        started.create(7, vec![("status", "running".into()), ("step", 0.into())]);
        assert_eq!(
            texts(&started),
            [
                "INSERT INTO saga_instances (id, last_position, status, step) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO NOTHING",
                "INSERT INTO orders (instance_seq, last_position, status, step) \
                 SELECT seq, $2, $3, $4 FROM saga_instances WHERE id = $1 AND true ON CONFLICT DO NOTHING",
            ]
        );
        // the same row, one of its columns set again later: an upsert that takes it
        let mut moved = Change::default();
        moved.create(7, vec![("status", "running".into()), ("step", 0.into())]);
        moved.set(8, "status", "compensating".into());
        assert_eq!(
            texts(&moved)[0],
            "INSERT INTO saga_instances (id, last_position, status, step) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
             last_position = excluded.last_position WHERE saga_instances.last_position < excluded.last_position"
        );
        // a column the insert does not hold, set later
        let mut ended = Change::default();
        ended.create(7, vec![("status", "running".into()), ("step", 0.into())]);
        ended.set(9, "error", "boom".into());
        ended.set(9, "status", "failed".into());
        let (sql, args) = {
            let mut out = Vec::new();
            ended.instance_statements("i-1", &mut out);
            out.remove(0)
        };
        assert_eq!(
            &*sql,
            "INSERT INTO saga_instances (id, last_position, status, step, error) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET error = excluded.error, status = excluded.status, \
             last_position = excluded.last_position WHERE saga_instances.last_position < excluded.last_position"
        );
        assert_eq!(args.len(), 5);
        assert_eq!(texts(&ended)[2],
            "UPDATE orders SET error = $3, status = $4, last_position = $2 \
             WHERE instance_seq = (SELECT seq FROM saga_instances WHERE id = $1) AND last_position < $2");
        // the other order of the same columns numbers them otherwise
        let mut other = Change::default();
        other.set(3, "status", "failed".into());
        other.set(3, "error", "boom".into());
        assert_eq!(
            texts(&other)[0],
            "UPDATE saga_instances SET status = $3, error = $4, last_position = $2 \
             WHERE id = $1 AND last_position < $2"
        );
        // asked again, the texts are the ones kept
        let again = |c: &Change| {
            let mut out = Vec::new();
            c.instance_statements("i-2", &mut out);
            out.remove(0).0
        };
        assert!(Arc::ptr_eq(&again(&ended), &again(&ended)));
        assert!(search_insert(2).contains("($1, $2, $3, $4, $5), ($6, $7, $8, $9, $10)"));
        assert!(Arc::ptr_eq(&search_insert(2), &search_insert(2)));
    }
}
