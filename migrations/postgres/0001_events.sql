-- The event log: every stream's events, in one global order.
-- Positions are given out under a transaction-scoped advisory lock, so they
-- grow in commit order with no gaps, across every replica sharing the database.
CREATE TABLE events (
    position       BIGINT  PRIMARY KEY,
    stream         TEXT    NOT NULL,
    revision       BIGINT  NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           JSONB   NOT NULL,
    recorded_at    BIGINT  NOT NULL,
    UNIQUE (stream, revision)
);

CREATE INDEX events_type_position ON events (event_type, position);
