"""The catalog: one SQLite row per recording, its idempotency key and its status.

Statuses (DESIGN.md "Status model"): ``recording`` → ``uploading`` → ``completed`` |
``failed``; ``discarded`` when a policy drops a recording on purpose.

Idempotency keys are unique (``UNIQUE`` index), so at most one row, and so one stored object,
exists per key. A key is ``<source>:rid:<sender's recording id>`` when the sender names the
recording, else ``<source>:sha:<call_id>:<sha256 of the body>``, set when the body is complete.

Durability: WAL mode with ``synchronous=FULL``; once a write method returns, its change is
committed and survives a crash. Writes are group-committed: every write waiting while the
previous transaction commits goes into the next one, so N concurrent writers cost one WAL
fsync, not N (each write still succeeds or fails on its own). Reads go through a second,
read-only connection and see committed data only, without queueing behind a commit. aiosqlite
runs each connection in its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import secrets
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from recsink.audio import media_type_for

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    id              TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    source          TEXT NOT NULL,
    recording_id    TEXT,
    call_id         TEXT,
    interaction_id  TEXT,
    account_id      TEXT,
    from_uri        TEXT,
    to_uri          TEXT,
    status          TEXT NOT NULL CHECK (status IN
                        ('recording', 'uploading', 'completed', 'failed', 'discarded')),
    started_at      TEXT,
    stopped_at      TEXT,
    duration_ms     INTEGER,
    byte_size       INTEGER,
    media_type      TEXT,
    format          TEXT,
    channels        INTEGER,
    sample_rate     INTEGER,
    sha256          TEXT,
    storage_key     TEXT,
    storage_url     TEXT,
    name            TEXT,
    metadata        TEXT NOT NULL DEFAULT '{}',
    error           TEXT,
    attempts        INTEGER NOT NULL DEFAULT 1,
    received_at     TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recordings_call_id ON recordings (call_id, received_at);
CREATE INDEX IF NOT EXISTS recordings_recording_id ON recordings (recording_id);
CREATE INDEX IF NOT EXISTS recordings_status ON recordings (status);
"""

#: Schema changes by version, applied in order to catalogs older than SCHEMA_VERSION.
_MIGRATIONS = {
    # 2: recordings kept in the local spool while S3 was unreachable, and their shipping.
    2: """
ALTER TABLE recordings ADD COLUMN ship_state TEXT
    CHECK (ship_state IS NULL OR ship_state IN ('pending', 'shipped'));
ALTER TABLE recordings ADD COLUMN ship_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE recordings ADD COLUMN next_ship_at TEXT;
ALTER TABLE recordings ADD COLUMN ship_error TEXT;
CREATE INDEX IF NOT EXISTS recordings_shipping ON recordings (ship_state, next_ship_at);
""",
    # 3: recordings a platform stored elsewhere, pulled into recsink's storage (fetch.py).
    3: """
ALTER TABLE recordings ADD COLUMN pull_url TEXT;
ALTER TABLE recordings ADD COLUMN pull_state TEXT
    CHECK (pull_state IS NULL OR pull_state IN ('pending', 'done', 'failed'));
ALTER TABLE recordings ADD COLUMN pull_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE recordings ADD COLUMN next_pull_at TEXT;
ALTER TABLE recordings ADD COLUMN pull_error TEXT;
CREATE INDEX IF NOT EXISTS recordings_pulls ON recordings (pull_state, next_pull_at);
""",
}


class Status(enum.StrEnum):
    RECORDING = "recording"
    UPLOADING = "uploading"
    COMPLETED = "completed"
    FAILED = "failed"
    DISCARDED = "discarded"


#: A recording in one of these states is settled: a repeat of it is a duplicate.
SETTLED = frozenset({Status.COMPLETED, Status.DISCARDED})

Queue = Literal["pull", "ship"]
"""A retry queue kept in the catalog: audio still to pull, or spooled audio still to ship."""
#: Each queue's (state column, next-attempt column); the only names spliced into its SQL.
_QUEUE_COLUMNS: dict[str, tuple[str, str]] = {
    "pull": ("pull_state", "next_pull_at"), "ship": ("ship_state", "next_ship_at")}

#: How far along each status is; events only ever move a recording forward.
_PROGRESS = {Status.RECORDING: 0, Status.UPLOADING: 1, Status.COMPLETED: 2,
             Status.FAILED: 2, Status.DISCARDED: 2}


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime | None) -> str | None:
    """``2024-03-12T14:00:00Z`` (UTC, microseconds only when present)."""
    if when is None:
        return None
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_iso(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def whole_number(text: str | None) -> int | None:
    """A count sent as text (a platform's form field, an object's metadata) as an int:
    None unless it is all decimal digits."""
    return int(text) if text and text.isdecimal() else None


def new_id() -> str:
    """recsink's own id for a record: ``rec_`` + 20 random hex digits."""
    return "rec_" + secrets.token_hex(10)


@dataclass
class Recording:
    """A recording record (DESIGN.md "Status model"). Times are UTC; ``duration_ms`` in
    milliseconds; ``byte_size`` in bytes; ``sample_rate`` in Hz."""

    id: str
    source: str
    status: Status
    received_at: datetime
    idempotency_key: str | None = None
    recording_id: str | None = None
    call_id: str | None = None
    interaction_id: str | None = None
    account_id: str | None = None
    from_uri: str | None = None
    to_uri: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    duration_ms: int | None = None
    byte_size: int | None = None
    media_type: str | None = None
    format: str | None = None
    channels: int | None = None
    sample_rate: int | None = None
    sha256: str | None = None
    storage_key: str | None = None
    storage_url: str | None = None
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    updated_at: datetime | None = None
    #: Spooled while S3 was unreachable: "pending" until shipped, then "shipped".
    ship_state: str | None = None
    ship_attempts: int = 0
    next_ship_at: datetime | None = None
    ship_error: str | None = None
    #: Where the platform stored the recording, while recsink pulls it: "pending", then
    #: "done" or "failed".
    pull_url: str | None = None
    pull_state: str | None = None
    pull_attempts: int = 0
    next_pull_at: datetime | None = None
    pull_error: str | None = None

    def resource(self) -> dict[str, Any]:
        """The recording resource as served by the API and upload responses."""
        return {
            "id": self.id,
            "recording_id": self.recording_id,
            "source": self.source,
            "call_id": self.call_id,
            "interaction_id": self.interaction_id,
            "account_id": self.account_id,
            "from": self.from_uri,
            "to": self.to_uri,
            "status": str(self.status),
            "started_at": iso(self.started_at),
            "stopped_at": iso(self.stopped_at),
            "duration_ms": self.duration_ms,
            "byte_size": self.byte_size,
            "media_type": self.media_type,
            "format": self.format,
            "channels": self.channels,
            "sample_rate": self.sample_rate,
            "sha256": self.sha256,
            "storage_url": self.storage_url,
            "name": self.name,
            "received_at": iso(self.received_at),
            "updated_at": iso(self.updated_at),
            "attempts": self.attempts,
            "error": self.error,
            "metadata": self.metadata,
            "shipping": None if self.ship_state is None else {
                "state": self.ship_state, "attempts": self.ship_attempts,
                "next_attempt_at": iso(self.next_ship_at), "error": self.ship_error},
            "pull": None if self.pull_state is None else {
                "state": self.pull_state, "attempts": self.pull_attempts,
                "next_attempt_at": iso(self.next_pull_at), "error": self.pull_error},
        }

    def queue_pull(self, url: str) -> None:
        """Mark the recording as one recsink copies from ``url`` (:mod:`recsink.fetch`):
        ``uploading`` until the copy is stored, first attempt due now."""
        self.status = Status.UPLOADING
        self.pull_url, self.pull_state, self.next_pull_at = url, "pending", utcnow()

    def object_metadata(self) -> dict[str, Any]:
        """What a stored object carries about its recording (``x-amz-meta-*``); enough for
        :meth:`from_object_metadata` to rebuild the record (``recsink reindex``)."""
        return {
            "recsink-id": self.id, "idempotency-key": self.idempotency_key,
            "source": self.source, "call-id": self.call_id, "recording-id": self.recording_id,
            "interaction-id": self.interaction_id, "account-id": self.account_id,
            "from": self.from_uri, "to": self.to_uri, "name": self.name,
            "started-at": iso(self.started_at), "stopped-at": iso(self.stopped_at),
            "received-at": iso(self.received_at), "format": self.format,
            "sha256": self.sha256, "duration-ms": self.duration_ms,
            "channels": self.channels, "sample-rate": self.sample_rate,
        }

    @classmethod
    def from_object_metadata(cls, meta: Mapping[str, str], key: str, url: str) -> Recording:
        """A completed record for an object found in storage (``meta`` as decoded from its
        ``x-amz-meta-*``, plus ``bytes``, its size)."""

        def number(name: str) -> int | None:
            return whole_number(meta.get(name))

        fmt = meta.get("format") or key.rpartition(".")[2]
        return cls(
            id=meta.get("recsink-id") or new_id(), source=meta.get("source") or "unknown",
            status=Status.COMPLETED,
            received_at=_parse_iso(meta.get("received-at")) or utcnow(),
            idempotency_key=meta.get("idempotency-key") or None,
            recording_id=meta.get("recording-id") or None, call_id=meta.get("call-id") or None,
            interaction_id=meta.get("interaction-id") or None,
            account_id=meta.get("account-id") or None, from_uri=meta.get("from") or None,
            to_uri=meta.get("to") or None, name=meta.get("name") or None,
            started_at=_parse_iso(meta.get("started-at")),
            stopped_at=_parse_iso(meta.get("stopped-at")),
            duration_ms=number("duration-ms"), byte_size=number("bytes"),
            media_type=media_type_for(fmt), format=fmt, channels=number("channels"),
            sample_rate=number("sample-rate"), sha256=meta.get("sha256") or None,
            storage_key=key, storage_url=url)


_FIELDS = tuple(f.name for f in fields(Recording))
_TIMES = {"received_at", "started_at", "stopped_at", "updated_at", "next_ship_at",
          "next_pull_at"}


def _columns(record: Recording, updated_at: datetime | None = None) -> dict[str, Any]:
    """Every field of ``record`` as a row (without ``dataclasses.asdict``'s deep copies),
    ``updated_at`` set to the given time (UTC), by default to ``received_at``."""
    row = _to_row({name: getattr(record, name) for name in _FIELDS})
    row["updated_at"] = iso(updated_at) if updated_at is not None else row["received_at"]
    return row


def _to_row(values: Mapping[str, Any]) -> dict[str, Any]:
    row = {}
    for name, value in values.items():
        if name in _TIMES:
            value = iso(value)
        elif name == "metadata":
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        elif isinstance(value, enum.Enum):
            value = value.value
        row[name] = value
    return row


def _from_row(row: aiosqlite.Row) -> Recording:
    values = {k: row[k] for k in row.keys()}  # noqa: SIM118 (sqlite3.Row is not a Mapping)
    for name in _TIMES:
        values[name] = _parse_iso(values[name])
    values["metadata"] = json.loads(values["metadata"])
    values["status"] = Status(values["status"])
    return Recording(**values)


_SETTLED_SQL = ", ".join(f"'{s.value}'" for s in SETTLED)
_ALL_COLUMNS = ", ".join(_FIELDS)
_ALL_MARKS = ", ".join(f":{c}" for c in _FIELDS)
_INSERT = f"INSERT INTO recordings ({_ALL_COLUMNS}) VALUES ({_ALL_MARKS})"  # noqa: S608


def _rank(column: str) -> str:
    progress = " ".join(f"WHEN '{s.value}' THEN {n}" for s, n in _PROGRESS.items())
    return f"(CASE {column} {progress} END)"


#: begin(): a new row, or a further attempt on the unsettled row of the same key.
_BEGIN_KEYED = f"""{_INSERT}
    ON CONFLICT (idempotency_key) DO UPDATE SET
        attempts = attempts + (status NOT IN ({_SETTLED_SQL})),
        error = CASE WHEN status IN ({_SETTLED_SQL}) THEN error ELSE NULL END,
        updated_at = CASE WHEN status IN ({_SETTLED_SQL}) THEN updated_at
                          ELSE excluded.updated_at END,
        status = CASE WHEN status IN ({_SETTLED_SQL}) THEN status ELSE excluded.status END
    RETURNING *"""

#: adopt(): a found object's record; a settled row keeps every column.
_ADOPT_KEEPS = ("id", "idempotency_key", "received_at", "attempts", "metadata", "status")
_ADOPT_SET = ", ".join(
    f"{c} = CASE WHEN status IN ({_SETTLED_SQL}) THEN {c} ELSE excluded.{c} END"
    for c in _FIELDS if c not in _ADOPT_KEEPS)
_ADOPT_TAIL = (f" DO UPDATE SET {_ADOPT_SET}, status = CASE WHEN status IN ({_SETTLED_SQL}) "
               f"THEN status ELSE excluded.status END RETURNING *")

#: transition(): insert, or move forward and fill what the row does not have yet.
_FORWARD = f"{_rank('excluded.status')} > {_rank('status')}"
_TRANSITION_FILL = ", ".join(f"{c} = COALESCE({c}, excluded.{c})" for c in _FIELDS if c not in (
    "id", "idempotency_key", "status", "metadata", "received_at", "updated_at", "attempts",
    "ship_attempts", "pull_attempts", "pull_state", "pull_url", "next_pull_at"))
_TRANSITION_UPSERT = (
    f"{_INSERT} ON CONFLICT (idempotency_key) DO UPDATE SET {_TRANSITION_FILL}, "
    f"metadata = json_patch(metadata, excluded.metadata), "
    f"pull_url = COALESCE(pull_url, excluded.pull_url), "
    f"pull_state = COALESCE(pull_state, excluded.pull_state), "
    f"next_pull_at = COALESCE(next_pull_at, excluded.next_pull_at), "
    f"updated_at = CASE WHEN {_FORWARD} THEN excluded.updated_at ELSE updated_at END, "
    f"status = CASE WHEN {_FORWARD} THEN excluded.status ELSE status END")
_TRANSITION = f"{_TRANSITION_UPSERT} RETURNING *"
#: transition_matching(): the existing row moves only if metadata :_path is unset or equal.
_TRANSITION_MATCHING = (
    f"{_TRANSITION_UPSERT} WHERE json_extract(recordings.metadata, :_path) IS NULL "
    f"OR json_extract(recordings.metadata, :_path) = json_extract(excluded.metadata, :_path) "
    f"RETURNING *")

_Rows = Iterable[sqlite3.Row]


@dataclass
class _Write:
    """One write statement waiting for the next group commit."""

    sql: str
    args: Mapping[str, Any] | tuple[Any, ...]
    done: asyncio.Future[_Rows]


class Catalog:
    """Async access to the recordings table. Use :meth:`open`, then :meth:`close`."""

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        #: The writer connection; every write goes through :meth:`_write`.
        self._db = db
        self._reader = reader
        self._queue: list[_Write] = []
        self._committer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path) -> Catalog:
        """Open (creating if needed) the catalog at ``path``. Raises ``sqlite3.Error``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=5000")
        version = next(iter(await db.execute_fetchall("PRAGMA user_version")))[0]
        if version == 0:
            await db.executescript(_SCHEMA)
            version = 1
        for target in range(version + 1, SCHEMA_VERSION + 1):
            await db.executescript(
                f"BEGIN; {_MIGRATIONS[target]} PRAGMA user_version={target}; COMMIT;")
        reader = await aiosqlite.connect(path, isolation_level=None)
        reader.row_factory = aiosqlite.Row
        await reader.execute("PRAGMA query_only=1")
        await reader.execute("PRAGMA busy_timeout=5000")
        return cls(db, reader)

    async def close(self) -> None:
        """Finish the writes already submitted, then close both connections."""
        if self._committer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._committer)
        await self._reader.close()
        await self._db.close()

    async def ping(self) -> None:
        """Raise unless the catalog answers a query."""
        await self._reader.execute_fetchall("SELECT 1")

    # -- reads -----------------------------------------------------------------------------

    async def get(self, record_id: str) -> Recording | None:
        return await self._one("SELECT * FROM recordings WHERE id = ?", (record_id,))

    async def by_key(self, key: str) -> Recording | None:
        return await self._one("SELECT * FROM recordings WHERE idempotency_key = ?", (key,))

    async def latest_completed(
        self, source: str, call_id: str, name: str | None = None
    ) -> Recording | None:
        """The newest completed recording of ``call_id`` from ``source`` (with that file
        ``name`` when given)."""
        return await self._one(
            "SELECT * FROM recordings WHERE source = ? AND call_id = ? AND status = ?"
            " AND (? IS NULL OR name = ?) ORDER BY received_at DESC LIMIT 1",
            (source, call_id, Status.COMPLETED.value, name, name))

    async def search(
        self,
        *,
        call_id: str | None = None,
        recording_id: str | None = None,
        status: Status | None = None,
        limit: int = 100,
    ) -> list[Recording]:
        """Records matching every given filter, newest first."""
        where, args = [], []
        for column, value in (("call_id", call_id), ("recording_id", recording_id),
                              ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(str(value))
        sql = "SELECT * FROM recordings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY received_at DESC LIMIT ?"
        rows = await self._reader.execute_fetchall(sql, (*args, limit))
        return [_from_row(r) for r in rows]

    async def interrupted(self) -> list[Recording]:
        """Records left ``uploading`` by a process that stopped (call before serving)."""
        rows = await self._reader.execute_fetchall(
            "SELECT * FROM recordings WHERE status = ?", (Status.UPLOADING.value,))
        return [_from_row(r) for r in rows]

    async def due(self, queue: Queue, now: datetime, limit: int) -> list[Recording]:
        """Recordings waiting in ``queue`` ("pull" or "ship") whose next attempt is due
        (at or before ``now``, UTC), oldest first, at most ``limit``."""
        state, due_at = _QUEUE_COLUMNS[queue]
        rows = await self._reader.execute_fetchall(
            f"SELECT * FROM recordings WHERE {state} = 'pending' AND {due_at} <= ? "  # noqa: S608
            f"ORDER BY {due_at} LIMIT ?", (iso(now), limit))
        return [_from_row(r) for r in rows]

    async def pending(self, queue: Queue) -> int:
        """How many recordings wait in ``queue`` ("pull" or "ship"), due or not."""
        state, _ = _QUEUE_COLUMNS[queue]
        rows = list(await self._reader.execute_fetchall(
            f"SELECT COUNT(*) FROM recordings WHERE {state} = 'pending'"))  # noqa: S608
        return int(rows[0][0])

    async def _one(self, sql: str, args: tuple[Any, ...]) -> Recording | None:
        rows = list(await self._reader.execute_fetchall(sql, args))
        return _from_row(rows[0]) if rows else None

    # -- writes ----------------------------------------------------------------------------

    async def begin(self, record: Recording) -> Recording:
        """Start an upload attempt for ``record`` and return the row it runs on.

        Without an idempotency key a new row is inserted. With one, the existing row of that
        key is reused: if it is settled (completed or discarded) it is returned unchanged,
        which means the upload is a duplicate; otherwise it goes back to ``uploading`` with
        one more attempt counted.
        """
        row = _columns(record)
        sql = _BEGIN_KEYED if record.idempotency_key is not None else _INSERT + " RETURNING *"
        return _from_row(next(iter(await self._write(sql, row))))

    async def insert(self, record: Recording) -> Recording | None:
        """Insert ``record`` unless a record with its idempotency key exists; the new row,
        or None (the existing record is left as it is)."""
        row = _columns(record)
        rows = list(await self._write(
            f"{_INSERT} ON CONFLICT (idempotency_key) DO NOTHING RETURNING *", row))
        return _from_row(rows[0]) if rows else None

    async def update(self, record_id: str, **values: Any) -> Recording:
        """Set columns of one record (``updated_at`` too) and return the record. Raises
        ``KeyError`` when there is no such record."""
        values["updated_at"] = utcnow()
        row = _to_row(values)
        assigns = ", ".join(f"{c} = :{c}" for c in row)
        rows = list(await self._write(
            f"UPDATE recordings SET {assigns} WHERE id = :_id RETURNING *",  # noqa: S608
            {**row, "_id": record_id}))
        if not rows:
            raise KeyError(record_id)
        return _from_row(rows[0])

    async def adopt(self, record: Recording) -> Recording:
        """Record a recording found already stored (by another instance, or by
        ``recsink reindex``): insert it, or settle the unsettled row of its idempotency key.
        A settled row is left as it is. Returns the row."""
        row = _columns(record, updated_at=utcnow())
        conflict = "idempotency_key" if record.idempotency_key else "id"
        sql = f"{_INSERT} ON CONFLICT ({conflict}){_ADOPT_TAIL}"
        return _from_row(next(iter(await self._write(sql, row))))

    async def transition(self, record: Recording) -> Recording:
        """Apply a platform's status event for ``record.idempotency_key``: insert the record,
        or move the existing one forward (a status never goes back: a late or repeated event
        changes nothing), filling fields it does not have yet and merging metadata.
        Returns the record as it now is."""
        assert record.idempotency_key is not None
        row = _columns(record)
        return _from_row(next(iter(await self._write(_TRANSITION, row))))

    async def transition_matching(self, record: Recording, name: str) -> Recording | None:
        """:meth:`transition`, except that an existing record whose metadata holds another
        value under ``name`` (a top-level key) is left alone: None then."""
        assert record.idempotency_key is not None
        row = _columns(record)
        row["_path"] = "$." + json.dumps(name)
        rows = list(await self._write(_TRANSITION_MATCHING, row))
        return _from_row(rows[0]) if rows else None

    async def release_key(self, record_id: str) -> None:
        """Take the idempotency key off an unsettled record, so another attempt may use it."""
        await self._write(
            "UPDATE recordings SET idempotency_key = NULL WHERE id = ?", (record_id,))

    async def delete(self, record_id: str) -> None:
        await self._write("DELETE FROM recordings WHERE id = ?", (record_id,))

    async def _write(self, sql: str, args: Mapping[str, Any] | tuple[Any, ...]) -> _Rows:
        """Run one write statement in the next group commit; its rows once committed.
        Raises ``sqlite3.Error`` when the statement or its commit fails (nothing of it
        is then kept)."""
        write = _Write(sql, args, asyncio.get_running_loop().create_future())
        self._queue.append(write)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_queued())
        return await write.done

    async def _commit_queued(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._commit(batch)
                except BaseException as exc:
                    for write in batch:
                        _resolve(write.done, error=exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            self._committer = None

    async def _commit(self, batch: list[_Write]) -> None:
        """One transaction for ``batch``; each write's future gets its rows after the
        commit, or the error of its own statement (a failed statement undoes only itself),
        or the commit's error."""
        db = self._db
        if len(batch) == 1:  # autocommit: no BEGIN/COMMIT round trips
            write = batch[0]
            _resolve(write.done, await db.execute_fetchall(write.sql, write.args))
            return
        await db.execute("BEGIN IMMEDIATE")
        ran: list[tuple[_Write, _Rows]] = []
        for write in batch:
            try:
                rows = await db.execute_fetchall(write.sql, write.args)
            except sqlite3.Error as exc:
                if not db.in_transaction:  # the error rolled back the writes before it too
                    for earlier, _ in ran:
                        _resolve(earlier.done, error=exc)
                    ran = []
                    await db.execute("BEGIN IMMEDIATE")
                _resolve(write.done, error=exc)
                continue
            ran.append((write, rows))
        try:
            await db.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                await db.execute("ROLLBACK")
            raise
        for write, rows in ran:
            _resolve(write.done, rows)


def _resolve(
    done: asyncio.Future[_Rows], rows: _Rows = (), error: BaseException | None = None
) -> None:
    """Hand a write its rows or its error, unless its caller stopped waiting."""
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(rows)
