-- 1: one row per recording, its idempotency key and its status.
CREATE TABLE IF NOT EXISTS recordings (
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
                        ('recording', 'uploading', 'completed', 'failed', 'discarded')),
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
    updated_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recordings_call_id ON recordings (call_id, received_at);
CREATE INDEX IF NOT EXISTS recordings_recording_id ON recordings (recording_id);
CREATE INDEX IF NOT EXISTS recordings_status ON recordings (status);
