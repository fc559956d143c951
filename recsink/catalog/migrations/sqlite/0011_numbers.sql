-- 11: the console's search by phone number (recsink/catalog/search.py) without reading
-- every row: the numbers a recording carries (the user parts of from and to, Kazoo's
-- caller_id_number and callee_id_number) in a side table kept by triggers, indexed by an FTS5 trigram index,
-- which answers LIKE '%<digits>%' from the index. The side table's INTEGER PRIMARY KEY is
-- the index's rowid (recordings' own rowid may change on VACUUM). A later migration that
-- rebuilds recordings must create these triggers again. Metadata written before recsink
-- stored only standard JSON may hold Infinity or NaN, which json_extract refuses: json_valid
-- first.
CREATE TABLE recording_numbers (
    n         INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    numbers   TEXT NOT NULL
);
CREATE VIRTUAL TABLE recording_numbers_fts USING fts5(
    numbers, content = 'recording_numbers', content_rowid = 'n', tokenize = 'trigram');
CREATE TRIGGER recording_numbers_inserted AFTER INSERT ON recording_numbers BEGIN
    INSERT INTO recording_numbers_fts (rowid, numbers) VALUES (new.n, new.numbers);
END;
CREATE TRIGGER recording_numbers_deleted AFTER DELETE ON recording_numbers BEGIN
    INSERT INTO recording_numbers_fts (recording_numbers_fts, rowid, numbers)
    VALUES ('delete', old.n, old.numbers);
END;
CREATE TRIGGER recording_numbers_updated AFTER UPDATE ON recording_numbers BEGIN
    INSERT INTO recording_numbers_fts (recording_numbers_fts, rowid, numbers)
    VALUES ('delete', old.n, old.numbers);
    INSERT INTO recording_numbers_fts (rowid, numbers) VALUES (new.n, new.numbers);
END;
CREATE TRIGGER recordings_numbers_inserted AFTER INSERT ON recordings BEGIN
    INSERT INTO recording_numbers (record_id, numbers)
    VALUES (new.id,
            CASE WHEN instr(new.from_uri, '@') > 0 THEN substr(new.from_uri, 1, instr(new.from_uri, '@') - 1) ELSE coalesce(new.from_uri, '') END || ' '
            || CASE WHEN instr(new.to_uri, '@') > 0 THEN substr(new.to_uri, 1, instr(new.to_uri, '@') - 1) ELSE coalesce(new.to_uri, '') END || ' '
            || CASE WHEN json_valid(new.metadata) THEN coalesce(json_extract(new.metadata, '$.caller_id_number'), '') ELSE '' END || ' '
            || CASE WHEN json_valid(new.metadata) THEN coalesce(json_extract(new.metadata, '$.callee_id_number'), '') ELSE '' END)
    ON CONFLICT (record_id) DO UPDATE SET numbers = excluded.numbers;
END;
CREATE TRIGGER recordings_numbers_updated AFTER UPDATE OF from_uri, to_uri, metadata
ON recordings BEGIN
    INSERT INTO recording_numbers (record_id, numbers)
    VALUES (new.id,
            CASE WHEN instr(new.from_uri, '@') > 0 THEN substr(new.from_uri, 1, instr(new.from_uri, '@') - 1) ELSE coalesce(new.from_uri, '') END || ' '
            || CASE WHEN instr(new.to_uri, '@') > 0 THEN substr(new.to_uri, 1, instr(new.to_uri, '@') - 1) ELSE coalesce(new.to_uri, '') END || ' '
            || CASE WHEN json_valid(new.metadata) THEN coalesce(json_extract(new.metadata, '$.caller_id_number'), '') ELSE '' END || ' '
            || CASE WHEN json_valid(new.metadata) THEN coalesce(json_extract(new.metadata, '$.callee_id_number'), '') ELSE '' END)
    ON CONFLICT (record_id) DO UPDATE SET numbers = excluded.numbers
    WHERE numbers IS NOT excluded.numbers;
END;
CREATE TRIGGER recordings_numbers_deleted AFTER DELETE ON recordings BEGIN
    DELETE FROM recording_numbers WHERE record_id = old.id;
END;
INSERT INTO recording_numbers (record_id, numbers)
SELECT id,
       CASE WHEN instr(from_uri, '@') > 0 THEN substr(from_uri, 1, instr(from_uri, '@') - 1) ELSE coalesce(from_uri, '') END || ' '
            || CASE WHEN instr(to_uri, '@') > 0 THEN substr(to_uri, 1, instr(to_uri, '@') - 1) ELSE coalesce(to_uri, '') END || ' '
       || CASE WHEN json_valid(metadata) THEN coalesce(json_extract(metadata, '$.caller_id_number'), '') ELSE '' END || ' '
       || CASE WHEN json_valid(metadata) THEN coalesce(json_extract(metadata, '$.callee_id_number'), '') ELSE '' END
FROM recordings;
