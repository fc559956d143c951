-- 4: the catalog alone decides "stored once" (recsink/commit.py): who works on a record
-- (a lease), the multipart upload an upload has open, the spool that holds a spooled copy.
ALTER TABLE recordings ADD COLUMN lease_owner TEXT;
ALTER TABLE recordings ADD COLUMN lease_until TEXT;
ALTER TABLE recordings ADD COLUMN upload_key TEXT;
ALTER TABLE recordings ADD COLUMN upload_id TEXT;
ALTER TABLE recordings ADD COLUMN ship_spool TEXT;
CREATE INDEX recordings_leases ON recordings (lease_until) WHERE lease_owner IS NOT NULL;
-- Uploads left 'uploading' by an earlier version held no lease: give each an expired one,
-- so they are settled like every interrupted upload. A Sinch recording_finished record is
-- 'uploading' at Sinch, not here: it is left alone, and one that an earlier version's
-- start-up wrongly failed goes back to 'uploading' (its recording_available completes it).
UPDATE recordings SET lease_owner = 'earlier-version', lease_until = '1970-01-01T00:00:00.000000Z'
    WHERE status = 'uploading' AND NOT (source = 'sinch' AND pull_state IS NULL);
UPDATE recordings SET status = 'uploading', error = NULL
    WHERE source = 'sinch' AND status = 'failed' AND error = 'interrupted'
      AND pull_state IS NULL AND storage_key IS NULL;
