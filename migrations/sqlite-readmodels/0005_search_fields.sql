-- Input fields a workflow declares searchable (`search:`), per version,
-- written from the WorkflowPublished events. Versions published before this
-- release could not declare any, so nothing needs replaying.
CREATE TABLE search_fields (
    workflow TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    field    TEXT    NOT NULL,
    PRIMARY KEY (workflow, version, field)
);

-- One row per value of a searchable field in an instance's input. A search
-- reads one range of the key, newest first, whatever the number of instances.
CREATE TABLE instance_search (
    field       TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    instance_id TEXT    NOT NULL,
    workflow    TEXT    NOT NULL,
    PRIMARY KEY (field, value, started_at, instance_id)
) WITHOUT ROWID;

-- Retention forgets an instance's values by its id.
CREATE INDEX instance_search_instance ON instance_search (instance_id);
