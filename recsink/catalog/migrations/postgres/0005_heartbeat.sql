-- 5: one row that /readyz rewrites, so that readiness proves the catalog takes a write
-- (Catalog.check_writable).
CREATE TABLE recsink_heartbeat (
    id integer PRIMARY KEY CHECK (id = 1),
    beat_at timestamptz NOT NULL
);
