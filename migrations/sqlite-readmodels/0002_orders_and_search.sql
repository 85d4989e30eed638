-- Instance search by input fields, and the orders read model.
-- The read models are rebuilt from the log: emptying them here makes the
-- projection replay every event into the new shape on the next start.

DELETE FROM saga_instances;
DELETE FROM projection_checkpoints;

ALTER TABLE saga_instances ADD COLUMN input TEXT NOT NULL DEFAULT 'null';
ALTER TABLE saga_instances ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;

-- Cursor pagination walks (started_at, id) newest first.
CREATE INDEX saga_instances_started ON saga_instances (started_at DESC, id DESC);

-- One row per order: an instance of the `order` workflow, keyed by its input's order_id.
CREATE TABLE orders (
    order_id      TEXT    PRIMARY KEY,
    instance_id   TEXT    NOT NULL UNIQUE,
    customer_id   TEXT    NOT NULL,
    amount        REAL    NOT NULL,
    items         TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    error         TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    last_position INTEGER NOT NULL
);

CREATE INDEX orders_customer ON orders (customer_id, created_at DESC, order_id DESC);
