-- 8: Sendbird Calls (recsink/sources/sendbird_polls.py). A poll per ended direct call or
-- deleted room, asked about until its cloud recordings are settled: a work queue claimed
-- with leases like pulls, so it survives restarts and runs on one instance of a fleet.
CREATE TABLE sendbird_polls (
    id           text PRIMARY KEY,          -- 'direct_call:<call_id>' or 'room:<room_id>'
    kind         text NOT NULL CHECK (kind IN ('direct_call', 'room')),
    target_id    text NOT NULL,
    state        text NOT NULL CHECK (state IN ('pending', 'done', 'expired')),
    attempts     integer NOT NULL DEFAULT 0,
    first_seen   timestamptz NOT NULL,
    next_poll_at timestamptz NOT NULL,
    last_error   text,
    updated_at   timestamptz NOT NULL,
    lease_owner  text,
    lease_until  timestamptz
);
CREATE INDEX sendbird_polls_due ON sendbird_polls (state, next_poll_at);
-- Periodic work one instance of a fleet runs at a time (the reconcile sweep): a lease row.
CREATE TABLE sendbird_sweeps (
    name        text PRIMARY KEY,
    lease_owner text,
    lease_until timestamptz,
    last_run    timestamptz
);
INSERT INTO sendbird_sweeps (name) VALUES ('reconcile');
