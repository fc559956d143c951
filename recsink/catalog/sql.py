"""The catalog's statements, written once for SQLite and PostgreSQL.

Statements use ``:name`` parameters; a :class:`Dialect` turns them into its driver's style
(psycopg: ``%(name)s``) and supplies what the two engines spell differently: merging and
reading JSON, ``FOR UPDATE SKIP LOCKED``, and how times and JSON travel as values (SQLite
keeps both as text: times as fixed-width ISO 8601 UTC, which sorts like time itself;
PostgreSQL as ``timestamptz`` and ``jsonb``).
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import cache
from typing import Any

from recsink.catalog.records import SETTLED, Queue, Recording, Status, parse_iso

FIELDS = tuple(f.name for f in fields(Recording))
#: Values every driver takes as they are.
_PLAIN = frozenset({str, int, float, bool})
TIMES = frozenset({"received_at", "started_at", "stopped_at", "updated_at", "next_ship_at",
                   "next_pull_at", "lease_until", "deleted_at", "hold_since", "next_delete_at"})

_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


@dataclass(frozen=True)
class Dialect:
    """How one engine spells what the statements need."""

    name: str
    #: Parameter style: "named" (``:name``, sqlite3) or "pyformat" (``%(name)s``, psycopg).
    paramstyle: str
    #: ``{old}`` and ``{new}`` JSON objects merged, keys of ``new`` winning.
    json_merge: str
    #: The top-level value of ``{column}`` under the key in parameter ``:_key``
    #: (``:_path``, ``$."key"``, for SQLite), comparable with ``=``, NULL when absent.
    json_get: str
    #: Appended to a SELECT whose rows a claim locks (PostgreSQL: skip rows others hold).
    skip_locked: str

    @cache  # noqa: B019 (a handful of statements per dialect, kept for the process)
    def sql(self, text: str) -> str:
        """``text`` in this dialect's parameter style."""
        if self.paramstyle == "named":
            return text
        return _PARAM.sub(r"%(\1)s", text.replace("%", "%%"))

    def encode(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Column values as this engine's driver takes them (None stays None)."""
        row = dict(values)
        for name, value in values.items():
            if value is None or type(value) in _PLAIN:
                continue
            if isinstance(value, datetime):
                row[name] = self.encode_time(value)
            elif name == "metadata":
                row[name] = self.encode_json(value)
            elif isinstance(value, enum.Enum):
                row[name] = value.value
        return row

    def encode_time(self, when: datetime) -> Any:
        if self.name == "postgres":
            return when
        return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def encode_json(self, value: dict[str, Any]) -> Any:
        """``value`` as standard JSON (RFC 8259), which SQLite's JSON functions and
        PostgreSQL's jsonb read: a non-finite number (a sender's ``1e999``, which Python
        reads as infinity, or ``NaN``) is stored as null."""
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False)
        except ValueError:  # rare: walk the value only then
            value = _finite(value)
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if self.name == "postgres":
            from psycopg.types.json import Jsonb

            return Jsonb(value, dumps=lambda _: text)
        return text

    def decode(self, row: Sequence[Any]) -> Recording:
        """A row (every column of ``recordings``, in :data:`FIELDS` order) as a
        :class:`Recording`."""
        values = dict(zip(FIELDS, row, strict=True))
        for name in TIMES:
            value = values[name]
            if isinstance(value, str):
                values[name] = parse_iso(value)
            elif isinstance(value, datetime):
                values[name] = value.astimezone(UTC)
        if isinstance(values["metadata"], str):
            values["metadata"] = json.loads(values["metadata"])
        values["status"] = Status(values["status"])
        return Recording(**values)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


SQLITE = Dialect("sqlite", "named", json_merge="json_patch({old}, {new})",
                 json_get="json_extract({column}, :_path)", skip_locked="")
POSTGRES = Dialect("postgres", "pyformat", json_merge="{old} || {new}",
                   json_get="({column} -> :_key)", skip_locked=" FOR UPDATE SKIP LOCKED")


def json_key(name: str) -> dict[str, str]:
    """The parameters :attr:`Dialect.json_get` reads for the top-level key ``name``."""
    return {"_key": name, "_path": "$." + json.dumps(name)}


# -- statements ---------------------------------------------------------------------------

SETTLED_LIST = ", ".join(f"'{s.value}'" for s in sorted(SETTLED))
#: Every column, in :data:`FIELDS` order: rows come back as tuples in this order.
COLUMNS = ", ".join(FIELDS)
SELECT = f"SELECT {COLUMNS} FROM recordings"  # noqa: S608


def insert(columns: tuple[str, ...]) -> str:
    """``INSERT`` of ``columns`` (the others take their defaults: NULL, or the schema's),
    to which a statement's tail (``ON CONFLICT …``, ``RETURNING …``) is appended. Inserting
    only the values a record has keeps each statement, and its parameters, short."""
    marks = ", ".join(f":{c}" for c in columns)
    return f"INSERT INTO recordings ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608
#: How far along each status is; platform events only ever move a recording forward.
PROGRESS = {Status.RECORDING: 0, Status.UPLOADING: 1, Status.COMPLETED: 2,
            Status.FAILED: 2, Status.DISCARDED: 2, Status.DELETED: 3}
FREE = "(recordings.lease_until IS NULL OR recordings.lease_until < :_now)"

#: The tails of the statements that insert (see :func:`insert`).
RETURNING = f" RETURNING {COLUMNS}"

#: Take the lease of a key: a new row, or the unsettled row of the key if nobody holds it
#: (its previous holder's intent and multipart upload stay, for the taker to settle).
ACQUIRE = (
    " ON CONFLICT (idempotency_key) DO UPDATE SET "
    "lease_owner = excluded.lease_owner, lease_until = excluded.lease_until, "
    "attempts = recordings.attempts + 1, status = excluded.status, error = NULL, "
    "updated_at = excluded.updated_at "
    f"WHERE recordings.status NOT IN ({SETTLED_LIST}) AND {FREE}{RETURNING}")

#: Hold an unsettled row by id if nobody holds it.
TAKE = ("UPDATE recordings SET lease_owner = :_owner, lease_until = :_until "  # noqa: S608
        f"WHERE id = :_id AND status NOT IN ({SETTLED_LIST}) AND {FREE}{RETURNING}")

#: Insert unless the key has a row.
INSERT_NEW = f" ON CONFLICT (idempotency_key) DO NOTHING{RETURNING}"

#: A found object's record: insert it, or settle the unsettled row of its key.
_ADOPT_KEEPS = {"id", "idempotency_key", "received_at", "attempts", "metadata", "status"}
_ADOPT_SET = ", ".join(
    f"{c} = CASE WHEN recordings.status IN ({SETTLED_LIST}) THEN recordings.{c} "
    f"ELSE excluded.{c} END" for c in FIELDS if c not in _ADOPT_KEEPS)
ADOPT = (f" ON CONFLICT ({{target}}) DO UPDATE SET {_ADOPT_SET}, "
         f"status = CASE WHEN recordings.status IN ({SETTLED_LIST}) THEN recordings.status "
         f"ELSE excluded.status END{RETURNING}")


def _rank(column: str) -> str:
    progress = " ".join(f"WHEN '{s.value}' THEN {n}" for s, n in PROGRESS.items())
    return f"(CASE {column} {progress} END)"


_FORWARD = f"{_rank('excluded.status')} > {_rank('recordings.status')}"
_DELETED = "recordings.status = 'deleted'"
_NOT_FILLED = {"id", "idempotency_key", "status", "metadata", "received_at", "updated_at",
               "attempts", "ship_attempts", "pull_attempts", "lease_owner", "lease_until",
               "upload_key", "upload_id"}


def transition(dialect: Dialect, columns: tuple[str, ...], *, matching: bool) -> str:
    """(The tail of) inserting a platform's event of ``columns``, or moving the key's row
    forward, filling what it lacks of them and merging metadata; with ``matching``, only a
    row whose metadata has no value or the same value under the key in ``:_key``."""
    # A tombstone takes nothing from a late event: its cleared fields stay cleared.
    fill = ", ".join(f"{c} = CASE WHEN {_DELETED} THEN recordings.{c} "
                     f"ELSE COALESCE(recordings.{c}, excluded.{c}) END"
                     for c in columns if c not in _NOT_FILLED)
    fill = fill + ", " if fill else ""
    merged = (f"CASE WHEN {_DELETED} THEN recordings.metadata ELSE "
              + dialect.json_merge.format(old="recordings.metadata", new="excluded.metadata")
              + " END")
    sql = (f" ON CONFLICT (idempotency_key) DO UPDATE SET {fill}"
           f"metadata = {merged}, "
           f"updated_at = CASE WHEN {_FORWARD} THEN excluded.updated_at "
           "ELSE recordings.updated_at END, "
           f"status = CASE WHEN {_FORWARD} THEN excluded.status ELSE recordings.status END")
    if matching:
        old = dialect.json_get.format(column="recordings.metadata")
        new = dialect.json_get.format(column="excluded.metadata")
        sql += f" WHERE {old} IS NULL OR {old} = {new}"
    return sql + RETURNING


def update(columns: tuple[str, ...], *, fenced: bool) -> str:
    """Set ``columns`` of the row ``:_id`` (held by ``:_owner`` when ``fenced``)."""
    assigns = ", ".join(f"{c} = :{c}" for c in columns)
    where = "id = :_id AND lease_owner = :_owner" if fenced else "id = :_id"
    return f"UPDATE recordings SET {assigns} WHERE {where}{RETURNING}"  # noqa: S608


#: Each queue's due rows (not held by anyone) and their order.
_DUE: dict[str, tuple[str, str]] = {
    "pull": (f"pull_state = 'pending' AND next_pull_at <= :_now AND {FREE}", "next_pull_at"),
    "ship": (f"ship_state = 'pending' AND (ship_spool = :_spool OR ship_spool IS NULL) "
             f"AND next_ship_at <= :_now AND {FREE}", "next_ship_at"),
    # Expired leases; in a catalog no other process shares, every other process's too.
    "settle": ("lease_owner IS NOT NULL AND (lease_until < :_now "
               "OR lease_owner NOT LIKE :_mine)", "lease_until"),
}


#: A row of a work table (webhook deliveries, Sendbird polls and sweeps) that ``:_mine``'s
#: process may take: nobody holds it, its lease expired, or (a catalog no other process
#: shares) another, so stopped, process holds it (``lease_owner NOT LIKE :_mine``).
TAKEABLE = "(lease_until IS NULL OR lease_until < :_now OR lease_owner NOT LIKE :_mine)"


def lease_due(table: str, due: str, order: str, skip_locked: str, returning: str) -> str:
    """Lease up to ``:_limit`` rows of ``table`` that match ``due``, first by ``order``, to
    ``:_owner`` until ``:_until`` (``skip_locked``: the dialect's, so that processes
    sharing a PostgreSQL catalog take different rows); ``returning``: what they answer."""
    return (f"UPDATE {table} SET lease_owner = :_owner, lease_until = :_until "  # noqa: S608
            f"WHERE id IN (SELECT id FROM {table} WHERE {due} ORDER BY {order} "
            f"LIMIT :_limit{skip_locked}){returning}")


def claim(dialect: Dialect, queue: Queue) -> str:
    """Lease up to ``:_limit`` due rows of ``queue`` to ``:_owner`` until ``:_until``."""
    due, order = _DUE[queue]
    return dialect.sql(lease_due("recordings", due, order, dialect.skip_locked, RETURNING))


def pending(queue: Queue) -> str:
    """How many rows wait in ``queue``, due or not."""
    where = {"pull": "pull_state = 'pending'",
             "ship": "ship_state = 'pending' AND (ship_spool = :_spool OR ship_spool IS NULL)",
             "settle": "lease_owner IS NOT NULL"}[queue]
    return f"SELECT COUNT(*) AS n FROM recordings WHERE {where}"  # noqa: S608


# -- deletion (recsink.retention) ---------------------------------------------------------

#: A row that may be deleted now: not a tombstone, not held, nobody working on it, no
#: spooled copy waiting to be shipped (it sits on one instance's disk), and (for the
#: sweeper) not refused by storage recently.
DELETABLE = (f"recordings.status <> 'deleted' AND recordings.hold_reason IS NULL AND {FREE} "
             "AND (recordings.ship_state IS NULL OR recordings.ship_state <> 'pending')")

#: Hold one deletable row (by id) for its deletion.
LOCK_FOR_DELETION = (
    "UPDATE recordings SET lease_owner = :_owner, lease_until = :_until "  # noqa: S608
    f"WHERE id = :_id AND {DELETABLE}{RETURNING}")


def expired(dialect: Dialect, rules: Sequence[tuple[bool, bool]]) -> str:
    """Lease up to ``:_limit`` settled rows past their retention to ``:_owner`` until
    ``:_until``, oldest first. ``rules``: whether each rule filters by source and by
    account; rule ``n`` reads ``:_source<n>``, ``:_account<n>`` and ``:_cutoff<n>`` (rows
    received before it are expired). The first rule whose filters match a row decides
    (a CASE); a row no rule matches is kept."""
    arms = []
    for n, (source, account) in enumerate(rules):
        match = " AND ".join([*([f"source = :_source{n}"] if source else []),
                              *([f"account_id = :_account{n}"] if account else [])]) or "1 = 1"
        arms.append(f"WHEN {match} THEN (CASE WHEN received_at < :_cutoff{n} "
                    "THEN 1 ELSE 0 END)")
    due = (f"status IN ('completed', 'discarded', 'failed') AND {DELETABLE} "
           "AND (next_delete_at IS NULL OR next_delete_at <= :_now) "
           f"AND (CASE {' '.join(arms)} ELSE 0 END) = 1")
    return dialect.sql(lease_due("recordings", due, "received_at", dialect.skip_locked,
                                 RETURNING))
