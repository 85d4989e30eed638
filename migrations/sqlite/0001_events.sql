-- The event log: every stream's events, in one global order.
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL,
    revision       INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    recorded_at    INTEGER NOT NULL
);

CREATE UNIQUE INDEX events_stream_revision ON events (stream, revision);
