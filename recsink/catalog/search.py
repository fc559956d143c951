"""The operator console's search over recordings (:mod:`recsink.ui`): filters, keyset
cursors and the statements both engines run.

Results are newest first, ordered by ``(received_at, id)`` descending; a page's cursor is the
last row's pair, and the next page holds the rows strictly older than it (keyset paging: a
page costs the same however deep it is, and rows arriving meanwhile do not shift pages).
Indexes: migration 0010 (``received_at, id``; ``source``/``status`` with ``received_at``),
and those on call id, recording id and account.

A phone number matches when its digits are a substring of the from or to URI's user part
(before ``@``) or of Kazoo's
``caller_id_number`` / ``callee_id_number`` metadata, looked up in a trigram index
(migration 0011: FTS5 on SQLite, pg_trgm on PostgreSQL), so it costs about as much as the
rows it finds (bench/RESULTS.md has the numbers). Erasure
(:meth:`~recsink.catalog.Catalog.erasure_candidates`) looks wider, in every metadata value.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from recsink.catalog.records import Status, iso, parse_iso
from recsink.catalog.sql import SELECT, Dialect
from recsink.errors import Malformed


@dataclass(frozen=True)
class Filters:
    """What to look for; every given field must match (None: any). ``recording_id``
    matches recsink's id or the sender's; ``number``: digits only (see the module
    docstring); ``since`` (inclusive) and ``until`` (exclusive) bound ``received_at``
    (UTC)."""

    call_id: str | None = None
    recording_id: str | None = None
    account_id: str | None = None
    number: str | None = None
    source: str | None = None
    status: Status | None = None
    since: datetime | None = None
    until: datetime | None = None

    def given(self) -> dict[str, Any]:
        """The filters that are set, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) not in (None, "")}


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last row's ``received_at`` (UTC) and id."""

    received_at: datetime
    id: str

    def encode(self) -> str:
        """Opaque URL-safe text (base64url of ``<iso time>|<id>``)."""
        text = f"{iso(self.received_at)}|{self.id}".encode()
        return base64.urlsafe_b64encode(text).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor ``text`` encodes. Raises :class:`~recsink.errors.Malformed`
        (``bad_cursor``)."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            when, _, record_id = raw.partition("|")
        except ValueError:
            raise Malformed("bad_cursor", "the cursor is not one a search gave") from None
        received_at = parse_iso(when)
        if received_at is None or not record_id:
            raise Malformed("bad_cursor", "the cursor is not one a search gave")
        return cls(received_at, record_id)


#: A recording whose numbers hold ``:number`` (``%<digits>%``), answered from the index of
#: migration 0011 (SQLite: FTS5 trigram over ``recording_numbers``; PostgreSQL: a pg_trgm
#: GIN index on the same expression).
_NUMBER_MATCHES = {
    "sqlite": "id IN (SELECT record_id FROM recording_numbers WHERE n IN ("
              "SELECT rowid FROM recording_numbers_fts WHERE numbers LIKE :number))",
    "postgres": "(split_part(coalesce(from_uri, ''), '@', 1) || ' ' "
                "|| split_part(coalesce(to_uri, ''), '@', 1) || ' ' "
                "|| coalesce(metadata ->> 'caller_id_number', '') || ' ' "
                "|| coalesce(metadata ->> 'callee_id_number', '')) LIKE :number",
}


def where(dialect: Dialect, filters: Filters) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (``""`` for none) and parameters selecting ``filters``."""
    clauses: list[str] = []
    args: dict[str, Any] = {}
    for name in ("call_id", "account_id", "source"):
        value = getattr(filters, name)
        if value:
            clauses.append(f"{name} = :{name}")
            args[name] = value
    if filters.recording_id:
        clauses.append("(id = :recording_id OR recording_id = :recording_id)")
        args["recording_id"] = filters.recording_id
    if filters.status is not None:
        clauses.append("status = :status")
        args["status"] = filters.status.value
    if filters.number:
        clauses.append(_NUMBER_MATCHES[dialect.name])
        args["number"] = f"%{filters.number}%"
    if filters.since is not None:
        clauses.append("received_at >= :since")
        args["since"] = dialect.encode_time(filters.since)
    if filters.until is not None:
        clauses.append("received_at < :until")
        args["until"] = dialect.encode_time(filters.until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def page(dialect: Dialect, filters: Filters, after: Cursor | None,
         limit: int) -> tuple[str, dict[str, Any]]:
    """The statement of one page: up to ``limit`` rows older than ``after``."""
    clause, args = where(dialect, filters)
    if after is not None:
        keyset = ("(received_at < :_after_at OR "
                  "(received_at = :_after_at AND id < :_after_id))")
        clause += (" AND " if clause else " WHERE ") + keyset
        args.update(_after_at=dialect.encode_time(after.received_at), _after_id=after.id)
    args["_limit"] = limit
    return dialect.sql(f"{SELECT}{clause} ORDER BY received_at DESC, id DESC "
                       "LIMIT :_limit"), args


def count(dialect: Dialect, filters: Filters) -> tuple[str, dict[str, Any]]:
    """The statement counting every row ``filters`` select."""
    clause, args = where(dialect, filters)
    return dialect.sql(f"SELECT COUNT(*) FROM recordings{clause}"), args  # noqa: S608


def hour_of(dialect: Dialect) -> str:
    """``received_at``'s hour as ``YYYY-MM-DDTHH`` text (UTC) in this dialect."""
    if dialect.name == "postgres":
        return "to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24')"
    return "substr(received_at, 1, 13)"


def activity(dialect: Dialect) -> str:
    """Rows received since ``:since``: (hour text, source, status, how many)."""
    hour = hour_of(dialect)
    return dialect.sql(
        f"SELECT {hour} AS hour, source, status, COUNT(*) FROM recordings "  # noqa: S608
        f"WHERE received_at >= :since GROUP BY {hour}, source, status")


def decode_counts(rows: list[Any]) -> list[tuple[str, str, str, int]]:
    return [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]

