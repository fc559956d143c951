-- 7: retention, erasure and legal hold (recsink/retention.py). A deleted recording keeps
-- its row as a tombstone (status 'deleted'); the webhook update trigger now also reports
-- 'deleted' (recording.deleted).
ALTER TABLE recordings DROP CONSTRAINT recordings_status_check;
ALTER TABLE recordings ADD CONSTRAINT recordings_status_check CHECK (status IN
    ('recording', 'uploading', 'completed', 'failed', 'discarded', 'deleted'));
ALTER TABLE recordings ADD COLUMN deleted_at timestamptz;
ALTER TABLE recordings ADD COLUMN deletion_reason text;
ALTER TABLE recordings ADD COLUMN hold_reason text;
ALTER TABLE recordings ADD COLUMN hold_since timestamptz;
ALTER TABLE recordings ADD COLUMN delete_error text;
ALTER TABLE recordings ADD COLUMN next_delete_at timestamptz;
-- The retention sweep reads settled rows oldest first; erasures select by account.
CREATE INDEX recordings_retention ON recordings (received_at)
    WHERE status IN ('completed', 'discarded', 'failed');
CREATE INDEX recordings_account ON recordings (account_id, received_at);
DROP TRIGGER webhook_event_updated ON recordings;
CREATE TRIGGER webhook_event_updated AFTER UPDATE OF status ON recordings FOR EACH ROW
WHEN (NEW.status IN ('completed', 'discarded', 'failed', 'deleted')
      AND OLD.status IS DISTINCT FROM NEW.status
      AND (NEW.status <> 'failed' OR NEW.pull_state IS NOT DISTINCT FROM 'failed'
           OR OLD.ship_state IS NOT DISTINCT FROM 'pending'
           OR OLD.lease_owner IS NULL OR NEW.lease_owner IS NOT NULL))
EXECUTE FUNCTION recsink_webhook_event();
-- Erasures (POST /v1/erasures): what was asked (the selector, which is personal data
-- itself: it is what re-applying needs) and what it did.
CREATE TABLE erasures (
    id           text PRIMARY KEY,
    selector     text NOT NULL CHECK (selector IN ('call_id', 'account_id', 'number')),
    value        text NOT NULL,
    matched      integer NOT NULL,
    deleted      integer NOT NULL,
    held         text NOT NULL DEFAULT '[]',
    failed       text NOT NULL DEFAULT '[]',
    requested_by text,
    created_at   timestamptz NOT NULL
);
CREATE INDEX erasures_created ON erasures (created_at);
