-- Tombstones of removed streams (retention): appends to a removed stream are
-- refused while its tombstone is kept, so a late retried start cannot begin
-- a removed instance again.
CREATE TABLE removed_streams (
    stream     TEXT    PRIMARY KEY,
    removed_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX removed_streams_at ON removed_streams (removed_at);
