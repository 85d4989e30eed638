-- Retention finds the instances that ended before a time, oldest first.
CREATE INDEX saga_instances_finished ON saga_instances (finished_at) WHERE finished_at IS NOT NULL;
