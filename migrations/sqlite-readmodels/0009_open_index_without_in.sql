-- The index of unfinished instances, its condition written without `NOT IN`:
-- SQLite checks a partial index's condition on every write to the table, and
-- an `IN` list made it build a temporary table for each check (two for each
-- update of an instance's row). Four `<>` are the same condition without it.
-- `Projections::unfinished` asks with the same four terms, so the index serves it.
DROP INDEX saga_instances_open;
CREATE INDEX saga_instances_open ON saga_instances (status)
    WHERE status <> 'completed' AND status <> 'compensated'
      AND status <> 'failed' AND status <> 'cancelled';
