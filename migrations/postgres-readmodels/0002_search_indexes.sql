-- Listings filtered by workflow and status read an index in the order they
-- answer in, whatever the table's size: a status with no match no longer
-- walks every row of the workflow. The cursor's tie-break (id) is in each.
DROP INDEX saga_instances_workflow;
CREATE INDEX saga_instances_workflow ON saga_instances (workflow, started_at DESC, id DESC);
CREATE INDEX saga_instances_workflow_status ON saga_instances (workflow, status, started_at DESC, id DESC);
CREATE INDEX saga_instances_status ON saga_instances (status, started_at DESC, id DESC);
