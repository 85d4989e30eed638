-- Each instance's row gets a number, `seq` (the table's rowid), and the
-- listing indexes, `instance_search` and `orders` refer to the row by it
-- instead of by its 36-character id: every listing index already carries
-- the rowid, so naming the id in them again cost about 37 bytes per row in
-- each, and about 240 bytes of an order saga's read models in all (ADR 21).
-- Listings break ties of `started_at` by `seq` (the order rows were made
-- in), and their cursors name it. An order's amount and items are read
-- from its instance's input, which holds them already. The rows are
-- carried over, not replayed.

CREATE TABLE saga_instances_numbered (
    seq           INTEGER PRIMARY KEY,
    id            TEXT    NOT NULL UNIQUE,
    workflow      TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    status        TEXT    NOT NULL,
    current_step  TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    started_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    last_position INTEGER NOT NULL,
    input         TEXT    NOT NULL DEFAULT 'null',
    paused        INTEGER NOT NULL DEFAULT 0
);

INSERT INTO saga_instances_numbered (id, workflow, version, status, current_step, attempts, error,
    started_at, updated_at, finished_at, last_position, input, paused)
SELECT id, workflow, version, status, current_step, attempts, error,
    started_at, updated_at, finished_at, last_position, input, paused
FROM saga_instances ORDER BY started_at, id;

CREATE TABLE orders_numbered (
    order_id      TEXT    PRIMARY KEY,
    instance_seq  INTEGER NOT NULL UNIQUE,
    customer_id   TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    error         TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    last_position INTEGER NOT NULL
);

INSERT INTO orders_numbered (order_id, instance_seq, customer_id, status, error,
    created_at, updated_at, last_position)
SELECT o.order_id, i.seq, o.customer_id, o.status, o.error,
    o.created_at, o.updated_at, o.last_position
FROM orders o JOIN saga_instances_numbered i ON i.id = o.instance_id ORDER BY i.seq;

CREATE TABLE instance_search_numbered (
    field        TEXT    NOT NULL,
    value        TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    instance_seq INTEGER NOT NULL,
    workflow     TEXT    NOT NULL,
    PRIMARY KEY (field, value, started_at, instance_seq)
) WITHOUT ROWID;

INSERT INTO instance_search_numbered (field, value, started_at, instance_seq, workflow)
SELECT s.field, s.value, s.started_at, i.seq, s.workflow
FROM instance_search s JOIN saga_instances_numbered i ON i.id = s.instance_id;

DROP TABLE saga_instances;
DROP TABLE orders;
DROP TABLE instance_search;
ALTER TABLE saga_instances_numbered RENAME TO saga_instances;
ALTER TABLE orders_numbered RENAME TO orders;
ALTER TABLE instance_search_numbered RENAME TO instance_search;

-- The rowid ends every index, so these answer "newest first" with ties by seq.
CREATE INDEX saga_instances_open ON saga_instances (status)
    WHERE status NOT IN ('completed', 'compensated', 'failed', 'cancelled');
CREATE INDEX saga_instances_workflow ON saga_instances (workflow, started_at);
CREATE INDEX saga_instances_workflow_status ON saga_instances (workflow, status, started_at);
CREATE INDEX saga_instances_status ON saga_instances (status, started_at);
CREATE INDEX saga_instances_started ON saga_instances (started_at);
CREATE INDEX saga_instances_finished ON saga_instances (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX orders_customer ON orders (customer_id, created_at, order_id);

-- The old tables' pages go back to the file system now (the file was made
-- with auto_vacuum = INCREMENTAL), not at retention's first removal.
PRAGMA incremental_vacuum;
