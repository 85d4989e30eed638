-- `orders` keyed by the order id itself (WITHOUT ROWID). A table with a
-- rowid and a TEXT primary key holds each order id twice: in the row, and in
-- the index from the id to the rowid (about 36 bytes per order). Keyed by the
-- id, the row is found by it directly; the index by instance then leads to the
-- id instead of a rowid, and the customer index no longer ends in a rowid.
CREATE TABLE orders_keyed (
    order_id      TEXT    PRIMARY KEY,
    instance_seq  INTEGER NOT NULL UNIQUE,
    customer_id   TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    error         TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    last_position INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO orders_keyed (order_id, instance_seq, customer_id, status, error,
    created_at, updated_at, last_position)
SELECT order_id, instance_seq, customer_id, status, error,
    created_at, updated_at, last_position
FROM orders ORDER BY order_id;

DROP TABLE orders;
ALTER TABLE orders_keyed RENAME TO orders;
CREATE INDEX orders_customer ON orders (customer_id, created_at, order_id);

PRAGMA incremental_vacuum;
