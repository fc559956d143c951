"""The :class:`Catalog` interface and everything its two engines share.

Every method is one statement, so one transaction: what a method returns is committed
(durable), and a method that raises changed nothing, with one exception that callers must
allow for: a write whose caller was cancelled may still commit (the engine finishes it).

Leases (DESIGN.md "A fleet"): whoever works on a record (an upload, a pull, the shipper, a
settle) holds its lease: ``lease_owner`` until ``lease_until`` (UTC, from the writer's clock;
keep a fleet's clocks in sync). A write ``fenced`` by a lease changes the row only while that
lease still holds it, else raises :class:`LeaseLost`.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, ClassVar

from recsink.catalog import outbox, polls, sql
from recsink.catalog import search as finding
from recsink.catalog.group import Row
from recsink.catalog.outbox import Delivery, DeliveryState, Event
from recsink.catalog.polls import Poll, PollKind, PollState
from recsink.catalog.records import Queue, Recording, Status, iso, utcnow
from recsink.errors import Full, RecsinkError, Unavailable

#: The end of an insert statement, or what makes it from the inserted columns.
Tail = str | Callable[[tuple[str, ...]], str]


class CatalogUnavailable(Unavailable):
    """The catalog did not answer or failed; nothing of the write was kept."""

    def __init__(self, detail: str) -> None:
        super().__init__("catalog_unavailable", f"catalog: {detail}")


class CatalogFull(Full):
    """The catalog's disk is full; nothing of the write was kept."""

    def __init__(self, detail: str) -> None:
        super().__init__("storage_full", f"catalog: {detail}")


class LeaseLost(Unavailable):
    """The lease a write was fenced by is no longer held (it expired and was taken over)."""

    def __init__(self, record_id: str) -> None:
        super().__init__("lease_lost", f"record {record_id} was taken over by another "
                         "upload after its lease expired", retry_after=5)


class Conflict(Exception):
    """A write would give a second row a unique value (an idempotency key) that one has."""


class SchemaTooNew(RecsinkError):
    """The catalog was migrated by a newer recsink than this one."""


@dataclass(frozen=True)
class Lease:
    """A lease on one record: its id and the owner token written into the row."""

    record_id: str
    owner: str


class Catalog(abc.ABC):
    """Recording records and the work kept with them; see the module docstring."""

    #: Whether other recsink processes may share this catalog (PostgreSQL).
    shared: ClassVar[bool]

    def __init__(self, dialect: sql.Dialect) -> None:
        self.dialect = dialect
        self._claims = {q: sql.claim(dialect, q) for q in ("pull", "ship", "settle")}
        self._transition: Tail = partial(sql.transition, dialect, matching=False)
        self._transition_matching: Tail = partial(sql.transition, dialect, matching=True)
        #: (tail, inserted columns) -> the statement in this dialect.
        self._inserts: dict[tuple[Tail, tuple[str, ...]], str] = {}
        #: Retention rules' shapes -> their claim statement.
        self._expired: dict[tuple[tuple[bool, bool], ...], str] = {}

    # -- the engine -------------------------------------------------------------------------

    @abc.abstractmethod
    async def _read(self, statement: str, args: Mapping[str, Any]) -> list[Row]:
        """Rows of a read; raises :class:`CatalogUnavailable`."""

    @abc.abstractmethod
    async def _write(self, statement: str, args: Mapping[str, Any]) -> list[Row]:
        """Rows of a committed write (every write statement returns rows); raises
        :class:`CatalogUnavailable`, :class:`CatalogFull`, :class:`Conflict`, or
        :class:`~recsink.errors.Malformed` for a value the engine cannot store."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish the writes already submitted, then close."""

    async def ping(self) -> None:
        """Raise :class:`CatalogUnavailable` unless the catalog answers a query."""
        await self._read("SELECT 1", {})

    async def check_writable(self) -> None:
        """Raise :class:`CatalogUnavailable` (or :class:`CatalogFull`) unless the catalog
        commits a write: its one heartbeat row rewritten (a real commit, through the group
        commit, so as durable and as bounded in time as any other write)."""
        await self._write(self.dialect.sql(
            "INSERT INTO recsink_heartbeat (id, beat_at) VALUES (1, :beat_at) "
            "ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at RETURNING id"),
            {"beat_at": self.dialect.encode_time(utcnow())})

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the catalog is, for logs (a password never shows)."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The catalog's schema version (0: empty)."""

    # -- reads ------------------------------------------------------------------------------

    async def get(self, record_id: str) -> Recording | None:
        return await self._one(f"{sql.SELECT} WHERE id = :id", {"id": record_id})

    async def by_key(self, key: str) -> Recording | None:
        return await self._one(f"{sql.SELECT} WHERE idempotency_key = :key", {"key": key})

    async def by_storage_key(self, storage_key: str) -> Recording | None:
        """The newest record whose object is at ``storage_key``."""
        return await self._one(
            f"{sql.SELECT} WHERE storage_key = :storage_key ORDER BY received_at DESC LIMIT 1",
            {"storage_key": storage_key})

    async def latest_completed(
        self, source: str, call_id: str, name: str | None = None
    ) -> Recording | None:
        """The newest completed recording of ``call_id`` from ``source`` (with that file
        ``name`` when given)."""
        where = "source = :source AND call_id = :call_id AND status = 'completed'"
        if name is not None:
            where += " AND name = :name"
        return await self._one(
            f"{sql.SELECT} WHERE {where} ORDER BY received_at DESC LIMIT 1",
            {"source": source, "call_id": call_id, "name": name})

    async def search(
        self, *, call_id: str | None = None, recording_id: str | None = None,
        status: Status | None = None, limit: int = 100,
    ) -> list[Recording]:
        """Records matching every given filter, newest first."""
        args: dict[str, Any] = {"call_id": call_id, "recording_id": recording_id,
                                "status": status.value if status else None, "limit": limit}
        where = [f"{c} = :{c}" for c in ("call_id", "recording_id", "status")
                 if args[c] is not None]
        statement = sql.SELECT + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._read(self.dialect.sql(
            statement + " ORDER BY received_at DESC LIMIT :limit"), args)
        return [self.dialect.decode(r) for r in rows]

    async def find(self, filters: finding.Filters, after: finding.Cursor | None = None,
                   limit: int = 50) -> tuple[list[Recording], finding.Cursor | None]:
        """One page of the console's search (:mod:`recsink.catalog.search`): up to
        ``limit`` records matching ``filters``, newest first, older than ``after``; and the
        cursor of the next page (None on the last)."""
        statement, args = finding.page(self.dialect, filters, after, limit + 1)
        found = [self.dialect.decode(r) for r in await self._read(statement, args)]
        more = len(found) > limit
        found = found[:limit]
        last = found[-1] if more else None
        return found, (finding.Cursor(last.received_at, last.id) if last else None)

    async def count(self, filters: finding.Filters) -> int:
        """How many records match ``filters``."""
        statement, args = finding.count(self.dialect, filters)
        rows = await self._read(statement, args)
        return int(rows[0][0])

    async def activity(self, since: datetime) -> list[tuple[str, str, str, int]]:
        """Records received since ``since`` (UTC), counted by (hour ``YYYY-MM-DDTHH``
        UTC, source, status)."""
        rows = await self._read(finding.activity(self.dialect),
                                {"since": self.dialect.encode_time(since)})
        return finding.decode_counts(rows)

    async def delivery_backlog(self) -> int:
        """Webhook deliveries still pending plus events not fanned out yet."""
        rows = await self._read(
            "SELECT (SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending') + "
            "(SELECT COUNT(*) FROM webhook_events)", {})
        return int(rows[0][0])

    async def pending(self, queue: Queue, spool: str = "") -> int:
        """How many records wait in ``queue`` (ship: in ``spool``), due or not."""
        rows = await self._read(self.dialect.sql(sql.pending(queue)), {"_spool": spool})
        return int(rows[0][0])

    async def _one(self, statement: str, args: Mapping[str, Any]) -> Recording | None:
        rows = await self._read(self.dialect.sql(statement), args)
        return self.dialect.decode(rows[0]) if rows else None

    # -- platform events --------------------------------------------------------------------

    async def insert(self, record: Recording) -> Recording | None:
        """Insert ``record`` unless a record with its idempotency key exists; the new row,
        or None (the existing record is left as it is)."""
        rows = await self._inserting(sql.INSERT_NEW, self._values(record))
        return self.dialect.decode(rows[0]) if rows else None

    async def transition(self, record: Recording) -> Recording:
        """Apply a platform's status event for ``record.idempotency_key``: insert the record,
        or move the existing one forward (a status never goes back: a late or repeated event
        changes nothing), filling fields it does not have yet and merging metadata.
        Returns the record as it now is."""
        assert record.idempotency_key is not None
        rows = await self._inserting(self._transition, self._values(record))
        return self.dialect.decode(rows[0])

    async def transition_matching(self, record: Recording, name: str) -> Recording | None:
        """:meth:`transition`, except that an existing record whose metadata holds another
        value under ``name`` (a top-level key) is left alone: None then."""
        assert record.idempotency_key is not None
        rows = await self._inserting(self._transition_matching, self._values(record),
                                     **sql.json_key(name))
        return self.dialect.decode(rows[0]) if rows else None

    async def adopt(self, record: Recording) -> Recording:
        """Record a recording found already stored (``recsink reindex``): insert it, or
        settle the unsettled row of its idempotency key; a settled row is left as it is."""
        target = "idempotency_key" if record.idempotency_key else "id"
        rows = await self._inserting(sql.ADOPT.format(target=target),
                                     self._values(record, updated_at=utcnow()))
        return self.dialect.decode(rows[0])

    # -- leases -----------------------------------------------------------------------------

    async def create(self, record: Recording, lease: Lease, ttl: float) -> Recording:
        """Insert ``record`` (no idempotency key yet) held by ``lease`` for ``ttl`` s."""
        assert record.id == lease.record_id
        rows = await self._inserting(sql.RETURNING, self._leased(record, lease, ttl))
        return self.dialect.decode(rows[0])

    async def acquire(self, record: Recording, lease: Lease, ttl: float) -> Recording | None:
        """Hold the row of ``record.idempotency_key`` with ``lease`` for ``ttl`` seconds:
        ``record`` inserted as new, or the key's unsettled row that nobody holds taken over
        (``uploading``, one more attempt; what its previous holder left, an intent or a
        multipart upload, is still in it). None when the row is settled or held."""
        assert record.idempotency_key is not None
        now = utcnow()
        rows = await self._inserting(sql.ACQUIRE, self._leased(record, lease, ttl, now),
                                     _now=self.dialect.encode_time(now))
        return self.dialect.decode(rows[0]) if rows else None

    async def take(self, record_id: str, lease: Lease, ttl: float) -> Recording | None:
        """Hold the unsettled record ``record_id`` with ``lease`` for ``ttl`` seconds if
        nobody holds it; None otherwise."""
        now = utcnow()
        encode = self.dialect.encode_time
        rows = await self._write(self.dialect.sql(sql.TAKE),
            {"_owner": lease.owner, "_until": encode(now + timedelta(seconds=ttl)),
             "_now": encode(now), "_id": record_id})
        return self.dialect.decode(rows[0]) if rows else None

    async def renew(self, lease: Lease, ttl: float) -> bool:
        """Extend ``lease`` by ``ttl`` seconds from now; False when it is no longer held."""
        until = self.dialect.encode_time(utcnow() + timedelta(seconds=ttl))
        rows = await self._write(self.dialect.sql(
            "UPDATE recordings SET lease_until = :until WHERE id = :_id "
            "AND lease_owner = :_owner RETURNING id"),
            {"until": until, "_id": lease.record_id, "_owner": lease.owner})
        return bool(rows)

    async def update(self, record_id: str, lease: Lease | None = None,
                     **values: Any) -> Recording:
        """Set columns of one record (``updated_at`` too) and return it. With ``lease``,
        only while that lease holds the record (:class:`LeaseLost` otherwise). Raises
        ``KeyError`` when there is no such record, :class:`Conflict` when
        ``idempotency_key`` is another record's."""
        values["updated_at"] = utcnow()
        row = self.dialect.encode(values)
        statement = self.dialect.sql(sql.update(tuple(row), fenced=lease is not None))
        args = {**row, "_id": record_id, "_owner": lease.owner if lease else None}
        rows = await self._write(statement, args)
        if not rows:
            if lease is not None and await self.get(record_id) is not None:
                raise LeaseLost(record_id)
            raise KeyError(record_id)
        return self.dialect.decode(rows[0])

    async def release(self, lease: Lease, **values: Any) -> Recording:
        """:meth:`update` under ``lease`` that also gives the lease up."""
        return await self.update(lease.record_id, lease, lease_owner=None, lease_until=None,
                                 **values)

    async def claim(self, queue: Queue, owner: str, ttl: float, limit: int, *,
                    spool: str = "", now: datetime | None = None) -> list[Recording]:
        """Lease up to ``limit`` due records of ``queue`` to ``owner`` for ``ttl`` seconds
        (PostgreSQL: rows other transactions are claiming are skipped, so each goes to one
        claimer). ``pull``: pulls due; ``ship``: spooled copies in ``spool`` due;
        ``settle``: leases that expired (an interrupted holder), and in a catalog no other
        process shares, every lease another process than ``owner``'s holds (it stopped).
        ``owner`` is ``<process>/<n>``."""
        now = now or utcnow()
        encode = self.dialect.encode_time
        mine = "%" if self.shared else owner.rpartition("/")[0] + "/%"
        return [self.dialect.decode(r) for r in await self._write(self._claims[queue], {
            "_owner": owner, "_until": encode(utcnow() + timedelta(seconds=ttl)),
            "_now": encode(now), "_limit": limit, "_spool": spool, "_mine": mine})]

    async def delete(self, record_id: str) -> None:
        await self._write(self.dialect.sql("DELETE FROM recordings WHERE id = :id "
                                           "RETURNING id"), {"id": record_id})

    # -- deletion, holds, erasures (recsink.retention) ----------------------------------------

    async def lock_for_deletion(self, record_id: str, owner: str,
                                ttl: float) -> Recording | None:
        """Lease the record ``record_id`` to ``owner`` for ``ttl`` seconds to delete it:
        only a record that is not deleted, not held, not worked on by anyone and has no
        spooled copy waiting; None otherwise (read it to know why)."""
        now = utcnow()
        encode = self.dialect.encode_time
        rows = await self._write(self.dialect.sql(sql.LOCK_FOR_DELETION), {
            "_owner": owner, "_until": encode(now + timedelta(seconds=ttl)),
            "_now": encode(now), "_id": record_id})
        return self.dialect.decode(rows[0]) if rows else None

    async def claim_expired(self, rules: Sequence[tuple[str | None, str | None, datetime]],
                            owner: str, ttl: float, limit: int,
                            now: datetime | None = None) -> list[Recording]:
        """Lease up to ``limit`` settled records past their retention to ``owner`` for
        ``ttl`` seconds, oldest first (PostgreSQL: rows others are claiming are skipped).
        ``rules``: (source or None, account id or None, cutoff: UTC) in order; the first
        rule whose filters match a record decides, and it is expired when received before
        that rule's cutoff. Held records, spooled ones and ones storage refused until their
        ``next_delete_at`` are left out."""
        if not rules:
            return []
        shape = tuple((source is not None, account is not None)
                      for source, account, _ in rules)
        statement = self._expired.get(shape)
        if statement is None:
            statement = self._expired[shape] = sql.expired(self.dialect, shape)
        now = now or utcnow()
        encode = self.dialect.encode_time
        args: dict[str, Any] = {"_owner": owner, "_limit": limit, "_now": encode(now),
                                "_until": encode(utcnow() + timedelta(seconds=ttl))}
        for n, (source, account, cutoff) in enumerate(rules):
            args.update({f"_source{n}": source, f"_account{n}": account,
                         f"_cutoff{n}": encode(cutoff)})
        return [self.dialect.decode(r) for r in await self._write(statement, args)]

    async def hold(self, record_id: str, reason: str) -> Recording | None:
        """Put a legal hold on ``record_id`` (a new reason replaces the old one; ``since``
        stays); None when there is no such record or it is a tombstone."""
        now = self.dialect.encode_time(utcnow())
        rows = await self._write(self.dialect.sql(
            "UPDATE recordings SET hold_reason = :reason, updated_at = :now, "  # noqa: S608
            "hold_since = COALESCE(hold_since, :now) "
            f"WHERE id = :_id AND status <> 'deleted'{sql.RETURNING}"),
            {"reason": reason, "now": now, "_id": record_id})
        return self.dialect.decode(rows[0]) if rows else None

    async def release_hold(self, record_id: str) -> Recording | None:
        """Lift the legal hold of ``record_id``; None when there is no such record."""
        now = self.dialect.encode_time(utcnow())
        rows = await self._write(self.dialect.sql(
            "UPDATE recordings SET hold_reason = NULL, hold_since = NULL, "  # noqa: S608
            "updated_at = :now "
            f"WHERE id = :_id{sql.RETURNING}"), {"now": now, "_id": record_id})
        return self.dialect.decode(rows[0]) if rows else None

    async def erasure_candidates(self, selector: str, value: str, after: str = "",
                                 limit: int = 100) -> list[Recording]:
        """Records that are not tombstones and may match an erasure, ordered by id, after
        id ``after``. ``selector``: ``call_id`` or ``account_id`` (equal to ``value``), or
        ``number``: ``value`` is a LIKE pattern looked for in the from and to URIs and the
        metadata's text (the caller checks each candidate exactly)."""
        if selector == "number":
            where = ("(from_uri LIKE :value OR to_uri LIKE :value "
                     "OR CAST(metadata AS TEXT) LIKE :value)")
        else:
            assert selector in ("call_id", "account_id")
            where = f"{selector} = :value"
        rows = await self._read(self.dialect.sql(
            f"{sql.SELECT} WHERE status <> 'deleted' AND id > :after AND {where} "
            "ORDER BY id LIMIT :limit"), {"value": value, "after": after, "limit": limit})
        return [self.dialect.decode(r) for r in rows]

    async def add_erasure(self, erasure: Mapping[str, Any]) -> None:
        """Record an applied erasure: ``id``, ``selector``, ``value``, ``matched``,
        ``deleted``, ``held`` and ``failed`` (lists of record ids), ``requested_by``,
        ``created_at`` (UTC). Applying one again updates its counts."""
        values = dict(erasure)
        values["held"] = json.dumps(values["held"])
        values["failed"] = json.dumps(values["failed"])
        values["created_at"] = self.dialect.encode_time(values["created_at"])
        columns = ", ".join(values)
        marks = ", ".join(f":{c}" for c in values)
        await self._write(self.dialect.sql(
            f"INSERT INTO erasures ({columns}) VALUES ({marks}) "  # noqa: S608
            "ON CONFLICT (id) DO UPDATE SET matched = excluded.matched, "
            "deleted = excluded.deleted, held = excluded.held, failed = excluded.failed "
            "RETURNING id"), values)

    async def erasures(self, limit: int = 100) -> list[dict[str, Any]]:
        """Recorded erasures, newest first, as the API shows them."""
        rows = await self._read(self.dialect.sql(
            "SELECT id, selector, value, matched, deleted, held, failed, requested_by, "
            "created_at FROM erasures ORDER BY created_at DESC, id LIMIT :limit"),
            {"limit": limit})
        return [{"id": r[0], "selector": {r[1]: r[2]}, "matched": r[3], "deleted": r[4],
                 "held": json.loads(r[5]), "failed": json.loads(r[6]),
                 "requested_by": r[7], "created_at": iso(outbox.decode_time(r[8]))}
                for r in rows]

    async def scrub_deliveries(self, record_id: str,
                               rewrite: Callable[[str], str]) -> int:
        """Rewrite the stored body of every webhook delivery of ``record_id`` with
        ``rewrite(body)`` (a deleted recording's deliveries keep no personal data); how
        many were rewritten."""
        rows = await self._read(self.dialect.sql(
            "SELECT id, body FROM webhook_deliveries WHERE record_id = :id"),
            {"id": record_id})
        for delivery_id, body in rows:
            await self._write(self.dialect.sql(
                "UPDATE webhook_deliveries SET body = :body WHERE id = :id RETURNING id"),
                {"body": rewrite(body), "id": delivery_id})
        return len(rows)

    # -- the webhook outbox (recsink.catalog.outbox, recsink.webhooks) -----------------------

    async def events(self, limit: int = 100) -> list[tuple[Event, Recording | None]]:
        """Events waiting to be fanned out, oldest first, each with its recording as it is
        now (None when the row is gone)."""
        columns = ", ".join(f"r.{c}" for c in sql.FIELDS)
        rows = await self._read(self.dialect.sql(
            f"SELECT e.id, e.type, e.record_id, e.created_at, {columns} "  # noqa: S608
            "FROM webhook_events e LEFT JOIN recordings r ON r.id = e.record_id "
            "ORDER BY e.created_at, e.id LIMIT :limit"), {"limit": limit})
        return [(outbox.decode_event(row[:4]),
                 self.dialect.decode(row[4:]) if row[4] is not None else None)
                for row in rows]

    async def fan_out(self, deliveries: Sequence[Delivery]) -> int:
        """Insert ``deliveries`` (pending), each unless its event has one for its endpoint
        already (fanning out again, or on two instances at once, adds nothing); how many
        were inserted."""
        if not deliveries:
            return 0
        args: dict[str, Any] = {}
        for n, delivery in enumerate(deliveries):
            values = self.dialect.encode({
                "id": delivery.id, "event_id": delivery.event_id,
                "endpoint": delivery.endpoint, "type": delivery.type,
                "record_id": delivery.record_id, "body": delivery.body,
                "state": delivery.state, "next_attempt_at": delivery.next_attempt_at,
                "created_at": delivery.created_at, "updated_at": delivery.updated_at})
            args.update({f"{name}{n}": value for name, value in values.items()})
        rows = await self._write(
            self.dialect.sql(outbox.insert_deliveries(len(deliveries))), args)
        return len(rows)

    async def drop_events(self, ids: Sequence[str]) -> None:
        """Forget fanned-out events."""
        if not ids:
            return
        where, names = outbox.marks("_v", len(ids))
        await self._write(self.dialect.sql(
            f"DELETE FROM webhook_events WHERE id IN {where} RETURNING id"),  # noqa: S608
            dict(zip(names, ids, strict=True)))

    async def claim_deliveries(self, owner: str, ttl: float, limit: int,
                               endpoints: Sequence[str],
                               now: datetime | None = None) -> list[Delivery]:
        """Lease up to ``limit`` pending deliveries due by ``now`` to ``endpoints`` (ids;
        disabled ones left out) to ``owner`` (``<process>/<n>``) for ``ttl`` seconds; on
        PostgreSQL rows other transactions are claiming are skipped, so each attempt goes to
        one dispatcher; on SQLite, deliveries another (so a stopped) process held are
        claimed at once."""
        encode = self.dialect.encode_time
        _, names = outbox.marks("_e", len(endpoints))
        mine = "%" if self.shared else owner.rpartition("/")[0] + "/%"
        rows = await self._write(
            self.dialect.sql(outbox.claim(len(endpoints), self.dialect.skip_locked)),
            {"_owner": owner, "_until": encode(utcnow() + timedelta(seconds=ttl)),
             "_now": encode(now or utcnow()), "_limit": limit, "_mine": mine,
             **dict(zip(names, endpoints, strict=True))})
        return [outbox.decode_delivery(r) for r in rows]

    async def finish_attempt(self, delivery: Delivery, **values: Any) -> Delivery | None:
        """Record an attempt of ``delivery`` (``values``: columns) and give its lease up;
        None when its lease was lost meanwhile (another dispatcher has it now)."""
        values["updated_at"] = utcnow()
        row = self.dialect.encode({**values, "lease_owner": None, "lease_until": None})
        assigns = ", ".join(f"{c} = :{c}" for c in row)
        rows = await self._write(self.dialect.sql(
            f"UPDATE webhook_deliveries SET {assigns} "  # noqa: S608
            f"WHERE id = :_id AND lease_owner = :_owner{outbox.RETURNING}"),
            {**row, "_id": delivery.id, "_owner": delivery.lease_owner})
        return outbox.decode_delivery(rows[0]) if rows else None

    async def deliveries(self, *, state: DeliveryState | None = None,
                         record_id: str | None = None, limit: int = 100) -> list[Delivery]:
        """Deliveries matching every given filter, newest first."""
        args: dict[str, Any] = {"state": state, "record_id": record_id, "limit": limit}
        where = [f"{c} = :{c}" for c in ("state", "record_id") if args[c] is not None]
        statement = outbox.SELECT + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._read(self.dialect.sql(
            statement + " ORDER BY created_at DESC, id LIMIT :limit"), args)
        return [outbox.decode_delivery(r) for r in rows]

    async def retry_delivery(self, delivery_id: str) -> Delivery | None:
        """Make a delivery due now: a delivered or failed one gets one more attempt, a
        pending one keeps its schedule. None when there is no such delivery."""
        now = self.dialect.encode_time(utcnow())
        rows = await self._write(self.dialect.sql(
            "UPDATE webhook_deliveries SET next_attempt_at = :_now, "  # noqa: S608
            "updated_at = :_now, max_attempts = CASE WHEN state = 'pending' THEN max_attempts "
            "ELSE attempts + 1 END, state = 'pending' "
            f"WHERE id = :_id{outbox.RETURNING}"), {"_now": now, "_id": delivery_id})
        return outbox.decode_delivery(rows[0]) if rows else None

    async def disable_endpoint(self, endpoint: str, reason: str) -> None:
        """Stop sending to ``endpoint`` (its id) until :meth:`enable_endpoint`."""
        await self._write(self.dialect.sql(
            "INSERT INTO webhook_endpoints (id, disabled_at, reason) "
            "VALUES (:id, :disabled_at, :reason) ON CONFLICT (id) DO UPDATE SET "
            "disabled_at = excluded.disabled_at, reason = excluded.reason RETURNING id"),
            {"id": endpoint, "disabled_at": self.dialect.encode_time(utcnow()),
             "reason": reason})

    async def enable_endpoint(self, endpoint: str) -> bool:
        """Send to ``endpoint`` again; False when it was not disabled."""
        rows = await self._write(self.dialect.sql(
            "UPDATE webhook_endpoints SET disabled_at = NULL, reason = NULL "
            "WHERE id = :id AND disabled_at IS NOT NULL RETURNING id"), {"id": endpoint})
        return bool(rows)

    async def disabled_endpoints(self) -> dict[str, tuple[datetime | None, str | None]]:
        """Disabled endpoints: id -> (since when, why)."""
        rows = await self._read(
            "SELECT id, disabled_at, reason FROM webhook_endpoints "
            "WHERE disabled_at IS NOT NULL", {})
        return {str(r[0]): (outbox.decode_time(r[1]), r[2]) for r in rows}

    async def oldest_pending(self) -> datetime | None:
        """When the oldest event not yet delivered happened: the oldest pending delivery's
        or event's creation (None when nothing waits)."""
        rows = await self._read(
            "SELECT MIN(t) FROM (SELECT MIN(created_at) AS t FROM webhook_deliveries "
            "WHERE state = 'pending' UNION ALL "
            "SELECT MIN(created_at) AS t FROM webhook_events) AS waiting", {})
        return outbox.decode_time(rows[0][0]) if rows else None

    # -- Sendbird polls and sweeps (recsink.catalog.polls) ----------------------------------

    async def enqueue_poll(self, kind: PollKind, target_id: str, *,
                           reopen: bool = False) -> bool:
        """Queue a poll of the call or room, due now, unless it has one already (with
        ``reopen``, a ``done`` one is queued again); True when this queued it."""
        statement = polls.REOPEN if reopen else polls.ENQUEUE
        rows = await self._write(self.dialect.sql(statement), {
            "id": polls.poll_id(kind, target_id), "kind": kind, "target_id": target_id,
            "_now": self.dialect.encode_time(utcnow())})
        return bool(rows)

    async def poll(self, kind: PollKind, target_id: str) -> Poll | None:
        rows = await self._read(self.dialect.sql(f"{polls.SELECT} WHERE id = :id"),
                                {"id": polls.poll_id(kind, target_id)})
        return polls.decode_poll(rows[0]) if rows else None

    async def claim_polls(self, owner: str, ttl: float, limit: int,
                          now: datetime | None = None) -> list[Poll]:
        """Lease up to ``limit`` pending polls due by ``now`` to ``owner``
        (``<process>/<n>``) for ``ttl`` seconds; on PostgreSQL rows others are claiming are
        skipped, so each poll runs on one instance."""
        encode = self.dialect.encode_time
        mine = "%" if self.shared else owner.rpartition("/")[0] + "/%"
        rows = await self._write(self.dialect.sql(polls.claim(self.dialect.skip_locked)), {
            "_owner": owner, "_until": encode(utcnow() + timedelta(seconds=ttl)),
            "_now": encode(now or utcnow()), "_limit": limit, "_mine": mine})
        return [polls.decode_poll(r) for r in rows]

    async def finish_poll(self, poll: Poll, state: PollState, attempts: int,
                          next_poll_at: datetime, last_error: str | None) -> Poll | None:
        """Record a poll's attempt and give its lease up; None when the lease was lost."""
        encode = self.dialect.encode_time
        rows = await self._write(self.dialect.sql(polls.FINISH), {
            "state": state, "attempts": attempts, "next_poll_at": encode(next_poll_at),
            "last_error": last_error, "_now": encode(utcnow()), "_id": poll.id,
            "_owner": poll.lease_owner})
        return polls.decode_poll(rows[0]) if rows else None

    async def take_sweep(self, name: str, owner: str, ttl: float, interval: float) -> bool:
        """Hold the lease of the periodic job ``name`` for ``ttl`` seconds when nobody
        holds it and it last ran ``interval`` seconds ago or more; True when taken."""
        now = utcnow()
        encode = self.dialect.encode_time
        mine = "%" if self.shared else owner.rpartition("/")[0] + "/%"
        rows = await self._write(self.dialect.sql(polls.TAKE_SWEEP), {
            "name": name, "_owner": owner, "_until": encode(now + timedelta(seconds=ttl)),
            "_now": encode(now), "_due": encode(now - timedelta(seconds=interval)),
            "_mine": mine})
        return bool(rows)

    async def end_sweep(self, name: str, owner: str) -> None:
        """Give the lease of the periodic job ``name`` up."""
        await self._write(self.dialect.sql(polls.END_SWEEP), {"name": name, "_owner": owner})

    # -- values -----------------------------------------------------------------------------

    async def _inserting(self, tail: Tail, values: dict[str, Any], **extra: Any) -> list[Row]:
        """Run the insert statement ending in ``tail`` (or in what ``tail`` makes of the
        columns) for the columns of ``values`` that are not None (see
        :func:`recsink.catalog.sql.insert`), with ``extra`` parameters."""
        columns = tuple(name for name, value in values.items() if value is not None)
        statement = self._inserts.get((tail, columns))
        if statement is None:
            end = tail if isinstance(tail, str) else tail(columns)
            statement = self._inserts[tail, columns] = self.dialect.sql(
                sql.insert(columns) + end)
        return await self._write(statement, {**{c: values[c] for c in columns}, **extra})

    def _values(self, record: Recording, updated_at: datetime | None = None) -> dict[str, Any]:
        """Every field of ``record`` as parameters; ``updated_at`` (UTC) defaults to
        ``received_at``."""
        values = {name: getattr(record, name) for name in sql.FIELDS}
        values["updated_at"] = updated_at or record.received_at
        return self.dialect.encode(values)

    def _leased(self, record: Recording, lease: Lease, ttl: float,
                now: datetime | None = None) -> dict[str, Any]:
        values = self._values(record)
        values["lease_owner"] = lease.owner
        values["lease_until"] = self.dialect.encode_time(
            (now or utcnow()) + timedelta(seconds=ttl))
        return values
