-- A workflow's labels (key=value, set at submit, as OSMO's `--label`) and tags (added and
-- removed later, OSMO's `workflow tag`): rows, so that lists filter on them in SQL.
-- Keep in step with ../sqlite/20261129000003_labels_and_tags.sql.

CREATE TABLE workflow_labels (
    workflow_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (workflow_id, key)
);

CREATE TABLE workflow_tags (
    workflow_id TEXT NOT NULL,
    tag         TEXT NOT NULL,
    PRIMARY KEY (workflow_id, tag)
);
