-- 7: retention, erasure and legal hold (recsink/retention.py). A deleted recording keeps
-- its row as a tombstone (status 'deleted'); SQLite cannot change a CHECK constraint in
-- place, so the table is rebuilt with the new status and columns (indexes and the webhook
-- triggers, dropped with the old table, are made again; the update trigger now also
-- reports 'deleted').
CREATE TABLE recordings_v7 (
    id              TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    source          TEXT NOT NULL,
    recording_id    TEXT,
    call_id         TEXT,
    interaction_id  TEXT,
    account_id      TEXT,
    from_uri        TEXT,
    to_uri          TEXT,
    status          TEXT NOT NULL CHECK (status IN
                        ('recording', 'uploading', 'completed', 'failed', 'discarded',
                         'deleted')),
    started_at      TEXT,
    stopped_at      TEXT,
    duration_ms     INTEGER,
    byte_size       INTEGER,
    media_type      TEXT,
    format          TEXT,
    channels        INTEGER,
    sample_rate     INTEGER,
    sha256          TEXT,
    storage_key     TEXT,
    storage_url     TEXT,
    name            TEXT,
    metadata        TEXT NOT NULL DEFAULT '{}',
    error           TEXT,
    attempts        INTEGER NOT NULL DEFAULT 1,
    received_at     TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    ship_state      TEXT CHECK (ship_state IS NULL OR ship_state IN ('pending', 'shipped')),
    ship_attempts   INTEGER NOT NULL DEFAULT 0,
    next_ship_at    TEXT,
    ship_error      TEXT,
    pull_url        TEXT,
    pull_state      TEXT CHECK (pull_state IS NULL OR pull_state IN ('pending', 'done', 'failed')),
    pull_attempts   INTEGER NOT NULL DEFAULT 0,
    next_pull_at    TEXT,
    pull_error      TEXT,
    lease_owner     TEXT,
    lease_until     TEXT,
    upload_key      TEXT,
    upload_id       TEXT,
    ship_spool      TEXT,
    deleted_at      TEXT,
    deletion_reason TEXT,
    hold_reason     TEXT,
    hold_since      TEXT,
    delete_error    TEXT,
    next_delete_at  TEXT
);
INSERT INTO recordings_v7 (
    id, idempotency_key, source, recording_id, call_id, interaction_id, account_id, from_uri,
    to_uri, status, started_at, stopped_at, duration_ms, byte_size, media_type, format,
    channels, sample_rate, sha256, storage_key, storage_url, name, metadata, error, attempts,
    received_at, updated_at, ship_state, ship_attempts, next_ship_at, ship_error, pull_url,
    pull_state, pull_attempts, next_pull_at, pull_error, lease_owner, lease_until, upload_key,
    upload_id, ship_spool)
SELECT
    id, idempotency_key, source, recording_id, call_id, interaction_id, account_id, from_uri,
    to_uri, status, started_at, stopped_at, duration_ms, byte_size, media_type, format,
    channels, sample_rate, sha256, storage_key, storage_url, name, metadata, error, attempts,
    received_at, updated_at, ship_state, ship_attempts, next_ship_at, ship_error, pull_url,
    pull_state, pull_attempts, next_pull_at, pull_error, lease_owner, lease_until, upload_key,
    upload_id, ship_spool
FROM recordings;
DROP TABLE recordings;
ALTER TABLE recordings_v7 RENAME TO recordings;
CREATE INDEX recordings_call_id ON recordings (call_id, received_at);
CREATE INDEX recordings_recording_id ON recordings (recording_id);
CREATE INDEX recordings_status ON recordings (status);
CREATE INDEX recordings_shipping ON recordings (ship_state, next_ship_at);
CREATE INDEX recordings_pulls ON recordings (pull_state, next_pull_at);
CREATE INDEX recordings_leases ON recordings (lease_until) WHERE lease_owner IS NOT NULL;
-- The retention sweep reads settled rows oldest first; erasures select by account.
CREATE INDEX recordings_retention ON recordings (received_at)
    WHERE status IN ('completed', 'discarded', 'failed');
CREATE INDEX recordings_account ON recordings (account_id, received_at);
CREATE TRIGGER webhook_event_updated AFTER UPDATE OF status ON recordings
WHEN NEW.status IN ('completed', 'discarded', 'failed', 'deleted')
    AND OLD.status IS NOT NEW.status
    AND (NEW.status <> 'failed' OR NEW.pull_state IS 'failed' OR OLD.ship_state IS 'pending'
         OR OLD.lease_owner IS NULL OR NEW.lease_owner IS NOT NULL)
BEGIN
    INSERT INTO webhook_events (id, type, record_id, created_at)
    VALUES ('evt_' || lower(hex(randomblob(12))), 'recording.' || NEW.status, NEW.id,
            NEW.updated_at);
END;
CREATE TRIGGER webhook_event_inserted AFTER INSERT ON recordings
WHEN NEW.status IN ('completed', 'discarded', 'failed')
BEGIN
    INSERT INTO webhook_events (id, type, record_id, created_at)
    VALUES ('evt_' || lower(hex(randomblob(12))), 'recording.' || NEW.status, NEW.id,
            NEW.updated_at);
END;
-- Erasures (POST /v1/erasures): what was asked (the selector, which is personal data
-- itself: it is what re-applying needs) and what it did.
CREATE TABLE erasures (
    id           TEXT PRIMARY KEY,
    selector     TEXT NOT NULL CHECK (selector IN ('call_id', 'account_id', 'number')),
    value        TEXT NOT NULL,
    matched      INTEGER NOT NULL,
    deleted      INTEGER NOT NULL,
    held         TEXT NOT NULL DEFAULT '[]',
    failed       TEXT NOT NULL DEFAULT '[]',
    requested_by TEXT,
    created_at   TEXT NOT NULL
);
CREATE INDEX erasures_created ON erasures (created_at);
