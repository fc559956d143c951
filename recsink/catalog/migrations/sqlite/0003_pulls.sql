-- 3: recordings a platform stored elsewhere, pulled into recsink's storage (fetch.py).
ALTER TABLE recordings ADD COLUMN pull_url TEXT;
ALTER TABLE recordings ADD COLUMN pull_state TEXT
    CHECK (pull_state IS NULL OR pull_state IN ('pending', 'done', 'failed'));
ALTER TABLE recordings ADD COLUMN pull_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE recordings ADD COLUMN next_pull_at TEXT;
ALTER TABLE recordings ADD COLUMN pull_error TEXT;
CREATE INDEX IF NOT EXISTS recordings_pulls ON recordings (pull_state, next_pull_at);
