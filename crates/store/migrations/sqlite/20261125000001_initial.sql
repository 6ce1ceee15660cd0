-- osmo-store schema, SQLite flavour. Keep in step with ../postgres/20261125000001_initial.sql:
-- the two differ only where the dialects must (the auto-numbered log `seq`).

-- Per-name counters for workflow IDs `<name>-<N>`, N counting up from 1.
CREATE TABLE name_counters (
    name TEXT PRIMARY KEY NOT NULL,
    last BIGINT NOT NULL
);

-- One row per workflow; `state` is the engine's opaque JSON document (TEXT).
CREATE TABLE workflows (
    id               TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    pool             TEXT NOT NULL,
    priority         TEXT NOT NULL,
    status           TEXT NOT NULL,
    submitted_by     TEXT NOT NULL,
    submitted_at     BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    spec_source      TEXT NOT NULL,
    spec_rendered    TEXT NOT NULL,
    state            TEXT NOT NULL,
    state_version    BIGINT NOT NULL,
    last_event_seq   BIGINT NOT NULL DEFAULT 0,
    last_command_seq BIGINT NOT NULL DEFAULT 0,
    UNIQUE (name, seq)
);
CREATE INDEX workflows_newest ON workflows (submitted_at DESC, seq DESC, id DESC);
CREATE INDEX workflows_unfinished ON workflows (submitted_at) WHERE finished_at IS NULL;

-- Append-only event log, one row per committed event.
CREATE TABLE events (
    workflow_id    TEXT NOT NULL REFERENCES workflows (id),
    seq            BIGINT NOT NULL,
    at             BIGINT NOT NULL,
    schema_version BIGINT NOT NULL,
    body           TEXT NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);

-- Commands decided but not yet acknowledged as carried out (the outbox).
CREATE TABLE pending_commands (
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    seq         BIGINT NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);

-- Task output; `seq` numbers every line in arrival order.
CREATE TABLE logs (
    seq         INTEGER PRIMARY KEY,
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    task        TEXT NOT NULL,
    retry_id    BIGINT NOT NULL,
    at_ms       BIGINT NOT NULL,
    stream      TEXT NOT NULL,
    line        TEXT NOT NULL
);
CREATE INDEX logs_by_task ON logs (workflow_id, task, retry_id, seq);
CREATE INDEX logs_by_workflow ON logs (workflow_id, seq);
