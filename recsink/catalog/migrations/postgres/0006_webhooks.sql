-- 6: outbound webhooks (recsink/webhooks.py), a transactional outbox. A trigger writes an
-- event row in the statement (so the transaction) that moves a recording to a final status;
-- dispatchers fan each event out into one delivery per matching endpoint and send those.
CREATE TABLE webhook_events (
    id         text PRIMARY KEY,
    type       text NOT NULL,
    record_id  text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX webhook_events_created ON webhook_events (created_at);
CREATE TABLE webhook_deliveries (
    id              text PRIMARY KEY,
    event_id        text NOT NULL,
    endpoint        text NOT NULL,
    type            text NOT NULL,
    record_id       text NOT NULL,
    body            text NOT NULL,
    state           text NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer,
    last_status     integer,
    last_error      text,
    next_attempt_at timestamptz,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    lease_owner     text,
    lease_until     timestamptz,
    UNIQUE (event_id, endpoint)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_record ON webhook_deliveries (record_id);
CREATE TABLE webhook_endpoints (
    id          text PRIMARY KEY,
    disabled_at timestamptz,
    reason      text
);
CREATE FUNCTION recsink_webhook_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (id, type, record_id, created_at)
    VALUES ('evt_' || replace(gen_random_uuid()::text, '-', ''), 'recording.' || NEW.status,
            NEW.id, NEW.updated_at);
    RETURN NULL;
END
$$;
-- A final status reached by an update. 'failed' only when it is final: a pull that gave up,
-- a spooled copy lost, or a platform's report (a write that holds no lease); not an upload
-- attempt that failed (written by its lease holder as it gives the lease up), which the
-- PBX retries.
CREATE TRIGGER webhook_event_updated AFTER UPDATE OF status ON recordings FOR EACH ROW
WHEN (NEW.status IN ('completed', 'discarded', 'failed')
      AND OLD.status IS DISTINCT FROM NEW.status
      AND (NEW.status <> 'failed' OR NEW.pull_state IS NOT DISTINCT FROM 'failed'
           OR OLD.ship_state IS NOT DISTINCT FROM 'pending'
           OR OLD.lease_owner IS NULL OR NEW.lease_owner IS NOT NULL))
EXECUTE FUNCTION recsink_webhook_event();
-- A record inserted in a final status (a platform's report, a reindexed recording).
CREATE TRIGGER webhook_event_inserted AFTER INSERT ON recordings FOR EACH ROW
WHEN (NEW.status IN ('completed', 'discarded', 'failed'))
EXECUTE FUNCTION recsink_webhook_event();
