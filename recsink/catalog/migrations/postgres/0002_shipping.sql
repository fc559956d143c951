-- 2: recordings kept in the local spool while S3 was unreachable, and their shipping.
ALTER TABLE recordings ADD COLUMN ship_state text
    CHECK (ship_state IS NULL OR ship_state IN ('pending', 'shipped'));
ALTER TABLE recordings ADD COLUMN ship_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE recordings ADD COLUMN next_ship_at timestamptz;
ALTER TABLE recordings ADD COLUMN ship_error text;
CREATE INDEX recordings_shipping ON recordings (ship_state, next_ship_at);
