-- Retention deletes an instance's search values by their key, recomputed
-- from the instance's row (ADR 17), so the index by instance, as large as
-- the table itself, goes.
DROP INDEX instance_search_instance;
