-- Cost per event independent of the workflow's size: the engine's state leaves the row that
-- every commit touches. Between snapshots a commit appends events and updates a small row;
-- now and then it also rewrites the workflow's snapshot (the state as of `event_seq`), and
-- recovery replays the events after it. The spec texts move out of the hot row too, and the
-- command outbox goes: after a restart the server derives what to redo from the state itself.
-- Keep in step with ../postgres/20261129000001_event_log_and_snapshots.sql.

CREATE TABLE snapshots (
    workflow_id   TEXT PRIMARY KEY NOT NULL REFERENCES workflows (id),
    event_seq     BIGINT NOT NULL,
    state_version BIGINT NOT NULL,
    state         TEXT NOT NULL
);
INSERT INTO snapshots (workflow_id, event_seq, state_version, state)
    SELECT id, last_event_seq, state_version, state FROM workflows;

CREATE TABLE specs (
    workflow_id TEXT PRIMARY KEY NOT NULL REFERENCES workflows (id),
    source      TEXT NOT NULL,
    rendered    TEXT NOT NULL
);
INSERT INTO specs (workflow_id, source, rendered)
    SELECT id, spec_source, spec_rendered FROM workflows;

ALTER TABLE workflows DROP COLUMN state;
ALTER TABLE workflows DROP COLUMN state_version;
ALTER TABLE workflows DROP COLUMN spec_source;
ALTER TABLE workflows DROP COLUMN spec_rendered;
ALTER TABLE workflows DROP COLUMN last_command_seq;
DROP TABLE pending_commands;

-- The last log batch stored per source (a node agent instance): a batch sent again after a
-- crash lost its acknowledgement is recognised and not stored twice.
CREATE TABLE log_cursors (
    source TEXT PRIMARY KEY NOT NULL,
    seq    BIGINT NOT NULL
);
