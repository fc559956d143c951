-- 1: one row per recording, its idempotency key and its status.
CREATE TABLE recordings (
    id              text PRIMARY KEY,
    idempotency_key text UNIQUE,
    source          text NOT NULL,
    recording_id    text,
    call_id         text,
    interaction_id  text,
    account_id      text,
    from_uri        text,
    to_uri          text,
    status          text NOT NULL CHECK (status IN
                        ('recording', 'uploading', 'completed', 'failed', 'discarded')),
    started_at      timestamptz,
    stopped_at      timestamptz,
    duration_ms     bigint,
    byte_size       bigint,
    media_type      text,
    format          text,
    channels        integer,
    sample_rate     integer,
    sha256          text,
    storage_key     text,
    storage_url     text,
    name            text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    error           text,
    attempts        integer NOT NULL DEFAULT 1,
    received_at     timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX recordings_call_id ON recordings (call_id, received_at);
CREATE INDEX recordings_recording_id ON recordings (recording_id);
CREATE INDEX recordings_status ON recordings (status);
