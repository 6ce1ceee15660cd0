-- Users' credentials (OSMO's `osmo credential set`): the payload sealed with AES-256-GCM
-- under a key kept outside the store (the server's data directory), never in clear here.
-- Keep in step with ../postgres/20261129000005_credentials.sql.

CREATE TABLE credentials (
    username   TEXT NOT NULL,
    name       TEXT NOT NULL,
    cred_type  TEXT NOT NULL,
    profile    TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (username, name)
);
