-- 3: recordings a platform stored elsewhere, pulled into recsink's storage (fetch.py).
ALTER TABLE recordings ADD COLUMN pull_url text;
ALTER TABLE recordings ADD COLUMN pull_state text
    CHECK (pull_state IS NULL OR pull_state IN ('pending', 'done', 'failed'));
ALTER TABLE recordings ADD COLUMN pull_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE recordings ADD COLUMN next_pull_at timestamptz;
ALTER TABLE recordings ADD COLUMN pull_error text;
CREATE INDEX recordings_pulls ON recordings (pull_state, next_pull_at);
