-- Read models, kept by projections that follow the event log.

-- One row per saga instance: what status queries and listings read.
CREATE TABLE saga_instances (
    id            TEXT    PRIMARY KEY,
    workflow      TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    status        TEXT    NOT NULL,
    current_step  TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    started_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    last_position INTEGER NOT NULL
);

CREATE INDEX saga_instances_workflow ON saga_instances (workflow, started_at);
CREATE INDEX saga_instances_open ON saga_instances (status)
    WHERE status NOT IN ('completed', 'compensated', 'failed', 'cancelled');

-- How far each projection has read the log; written in the same transaction as its rows.
CREATE TABLE projection_checkpoints (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
);
