-- The listing indexes in ascending order. SQLite reads them backwards for
-- "newest first" just as fast (no sort), and a new instance now lands at
-- the right end of a range instead of the left: appends at the right end
-- leave full pages behind, inserts at the left split pages in halves that
-- stay half empty. Measured in docs/performance.md ("Event data compressed").
DROP INDEX saga_instances_workflow;
CREATE INDEX saga_instances_workflow ON saga_instances (workflow, started_at, id);
DROP INDEX saga_instances_workflow_status;
CREATE INDEX saga_instances_workflow_status ON saga_instances (workflow, status, started_at, id);
DROP INDEX saga_instances_status;
CREATE INDEX saga_instances_status ON saga_instances (status, started_at, id);
DROP INDEX saga_instances_started;
CREATE INDEX saga_instances_started ON saga_instances (started_at, id);
DROP INDEX orders_customer;
CREATE INDEX orders_customer ON orders (customer_id, created_at, order_id);
