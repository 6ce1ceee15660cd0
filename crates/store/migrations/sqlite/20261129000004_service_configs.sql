-- Service configurations changed through the API (OSMO's `PATCH /api/configs/{name}`,
-- e.g. the workflow configuration's label policy): one JSON document per name, with who
-- changed it last, when and why. A configuration the server's file sets is not stored here.
-- Keep in step with ../postgres/20261129000004_service_configs.sql.

CREATE TABLE service_configs (
    name        TEXT PRIMARY KEY,
    body        TEXT NOT NULL,
    description TEXT NOT NULL,
    updated_by  TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
