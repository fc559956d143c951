-- 10: the operator console's search (recsink/catalog/search.py): newest first, paged by
-- (received_at, id); by source and by status within a date range. Calls and accounts are
-- found through recordings_call_id and recordings_account (migrations 1 and 7).
CREATE INDEX recordings_received ON recordings (received_at, id);
CREATE INDEX recordings_source_received ON recordings (source, received_at, id);
CREATE INDEX recordings_status_received ON recordings (status, received_at, id);
