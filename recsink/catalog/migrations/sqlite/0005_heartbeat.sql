-- 5: one row that /readyz rewrites, so that readiness proves the catalog takes a write
-- (Catalog.check_writable).
CREATE TABLE recsink_heartbeat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    beat_at TEXT NOT NULL
);
