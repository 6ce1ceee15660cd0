-- API tokens (`auth: tokens`): only a SHA-256 of each is kept, so the table gives no one a
-- token; `role` is `user` or `admin`. Keep in step with ../sqlite/20261129000002_tokens.sql.

CREATE TABLE tokens (
    hash       TEXT PRIMARY KEY NOT NULL,
    username   TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
