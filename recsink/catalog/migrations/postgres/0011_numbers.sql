-- 11: the console's search by phone number (recsink/catalog/search.py) without reading
-- every row: a pg_trgm GIN index on the numbers a recording carries (the user parts of from and to, Kazoo's
-- caller_id_number and callee_id_number), which answers LIKE '%<digits>%' from the index.
-- pg_trgm is a trusted extension (PostgreSQL 13+: whoever may create in the database may
-- install it); where it cannot be installed the search still works, reading every row.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE INDEX recordings_numbers_trgm ON recordings USING gin ((
        split_part(coalesce(from_uri, ''), '@', 1) || ' '
        || split_part(coalesce(to_uri, ''), '@', 1) || ' '
        || coalesce(metadata ->> 'caller_id_number', '') || ' '
        || coalesce(metadata ->> 'callee_id_number', '')) gin_trgm_ops);
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'recsink: no pg_trgm (%): a search by number reads every row', SQLERRM;
END
$$;
