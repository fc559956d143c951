-- 9: recordings found by their object's key (recsink reindex: an object recsink adopted
-- where it was, which carries no recsink metadata, is the record that already names it).
CREATE INDEX recordings_storage_key ON recordings (storage_key);
