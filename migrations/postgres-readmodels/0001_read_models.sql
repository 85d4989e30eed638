-- Read models, kept by projections that follow the event log (the same shape as SQLite's).

CREATE TABLE saga_instances (
    id            TEXT    PRIMARY KEY,
    workflow      TEXT    NOT NULL,
    version       BIGINT  NOT NULL,
    status        TEXT    NOT NULL,
    current_step  TEXT,
    attempts      BIGINT  NOT NULL DEFAULT 0,
    error         TEXT,
    started_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    finished_at   BIGINT,
    last_position BIGINT  NOT NULL,
    input         TEXT    NOT NULL DEFAULT 'null',
    paused        BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE INDEX saga_instances_workflow ON saga_instances (workflow, started_at);
CREATE INDEX saga_instances_started ON saga_instances (started_at DESC, id DESC);
CREATE INDEX saga_instances_open ON saga_instances (status)
    WHERE status NOT IN ('completed', 'compensated', 'failed', 'cancelled');

CREATE TABLE orders (
    order_id      TEXT             PRIMARY KEY,
    instance_id   TEXT             NOT NULL UNIQUE,
    customer_id   TEXT             NOT NULL,
    amount        DOUBLE PRECISION NOT NULL,
    items         TEXT             NOT NULL,
    status        TEXT             NOT NULL,
    error         TEXT,
    created_at    BIGINT           NOT NULL,
    updated_at    BIGINT           NOT NULL,
    last_position BIGINT           NOT NULL
);

CREATE INDEX orders_customer ON orders (customer_id, created_at DESC, order_id DESC);

CREATE TABLE projection_checkpoints (
    name     TEXT   PRIMARY KEY,
    position BIGINT NOT NULL
);
