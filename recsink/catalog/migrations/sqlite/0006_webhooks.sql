-- 6: outbound webhooks (recsink/webhooks.py), a transactional outbox. A trigger writes an
-- event row in the statement (so the transaction) that moves a recording to a final status;
-- dispatchers fan each event out into one delivery per matching endpoint and send those.
CREATE TABLE webhook_events (
    id         TEXT PRIMARY KEY,
    type       TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX webhook_events_created ON webhook_events (created_at);
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    type            TEXT NOT NULL,
    record_id       TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    next_attempt_at TEXT,
    delivered_at    TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    lease_owner     TEXT,
    lease_until     TEXT,
    UNIQUE (event_id, endpoint)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_record ON webhook_deliveries (record_id);
CREATE TABLE webhook_endpoints (
    id          TEXT PRIMARY KEY,
    disabled_at TEXT,
    reason      TEXT
);
-- A final status reached by an update. 'failed' only when it is final: a pull that gave up,
-- a spooled copy lost, or a platform's report (a write that holds no lease); not an upload
-- attempt that failed (written by its lease holder as it gives the lease up), which the
-- PBX retries.
CREATE TRIGGER webhook_event_updated AFTER UPDATE OF status ON recordings
WHEN NEW.status IN ('completed', 'discarded', 'failed') AND OLD.status IS NOT NEW.status
    AND (NEW.status <> 'failed' OR NEW.pull_state IS 'failed' OR OLD.ship_state IS 'pending'
         OR OLD.lease_owner IS NULL OR NEW.lease_owner IS NOT NULL)
BEGIN
    INSERT INTO webhook_events (id, type, record_id, created_at)
    VALUES ('evt_' || lower(hex(randomblob(12))), 'recording.' || NEW.status, NEW.id,
            NEW.updated_at);
END;
-- A record inserted in a final status (a platform's report, a reindexed recording).
CREATE TRIGGER webhook_event_inserted AFTER INSERT ON recordings
WHEN NEW.status IN ('completed', 'discarded', 'failed')
BEGIN
    INSERT INTO webhook_events (id, type, record_id, created_at)
    VALUES ('evt_' || lower(hex(randomblob(12))), 'recording.' || NEW.status, NEW.id,
            NEW.updated_at);
END;
