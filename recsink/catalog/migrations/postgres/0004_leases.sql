-- 4: the catalog alone decides "stored once" (recsink/commit.py): who works on a record
-- (a lease), the multipart upload an upload has open, the spool that holds a spooled copy.
ALTER TABLE recordings ADD COLUMN lease_owner text;
ALTER TABLE recordings ADD COLUMN lease_until timestamptz;
ALTER TABLE recordings ADD COLUMN upload_key text;
ALTER TABLE recordings ADD COLUMN upload_id text;
ALTER TABLE recordings ADD COLUMN ship_spool text;
CREATE INDEX recordings_leases ON recordings (lease_until) WHERE lease_owner IS NOT NULL;
