-- Positions are no longer AUTOINCREMENT, which wrote `sqlite_sequence` on
-- every insert (about 5,000 instructions an event, docs/performance.md).
-- A position must still never be given out twice (followers read "after
-- position p"), and retention may remove the stream that holds the newest
-- event: the highest position given out before a removal is kept in
-- `log_head` (as on PostgreSQL), and the first event of each write
-- transaction is placed after both it and the newest event; SQLite places
-- the rest after that one.
-- (A database with many events takes a while to convert, once, on start.)
CREATE TABLE log_head (
    one      INTEGER PRIMARY KEY CHECK (one = 1),
    position INTEGER NOT NULL
);

INSERT INTO log_head (one, position)
SELECT 1, MAX(
    COALESCE((SELECT MAX(position) FROM events), 0),
    COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)
);

CREATE TABLE events_placed (
    position       INTEGER PRIMARY KEY,
    stream_id      INTEGER NOT NULL,
    revision       INTEGER NOT NULL,
    type_id        INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    recorded_at    INTEGER NOT NULL
);

INSERT INTO events_placed (position, stream_id, revision, type_id, schema_version, data, recorded_at)
SELECT position, stream_id, revision, type_id, schema_version, data, recorded_at FROM events;

DROP VIEW events_named;
DROP TABLE events;
ALTER TABLE events_placed RENAME TO events;
CREATE UNIQUE INDEX events_stream_revision ON events (stream_id, revision);

CREATE VIEW events_named AS
SELECT e.position, s.name AS stream, e.revision, t.name AS event_type, e.schema_version, e.data, e.recorded_at
FROM events e JOIN streams s ON s.id = e.stream_id JOIN event_types t ON t.id = e.type_id;
