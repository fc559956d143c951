-- 8: Sendbird Calls (recsink/sources/sendbird_polls.py). A poll per ended direct call or
-- deleted room, asked about until its cloud recordings are settled: a work queue claimed
-- with leases like pulls, so it survives restarts and runs on one instance of a fleet.
CREATE TABLE sendbird_polls (
    id           TEXT PRIMARY KEY,          -- 'direct_call:<call_id>' or 'room:<room_id>'
    kind         TEXT NOT NULL CHECK (kind IN ('direct_call', 'room')),
    target_id    TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'done', 'expired')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    first_seen   TEXT NOT NULL,
    next_poll_at TEXT NOT NULL,
    last_error   TEXT,
    updated_at   TEXT NOT NULL,
    lease_owner  TEXT,
    lease_until  TEXT
);
CREATE INDEX sendbird_polls_due ON sendbird_polls (state, next_poll_at);
-- Periodic work one instance of a fleet runs at a time (the reconcile sweep): a lease row.
CREATE TABLE sendbird_sweeps (
    name        TEXT PRIMARY KEY,
    lease_owner TEXT,
    lease_until TEXT,
    last_run    TEXT
);
INSERT INTO sendbird_sweeps (name) VALUES ('reconcile');
