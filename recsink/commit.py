"""The commit protocol: the catalog alone decides "stored once", on one machine or a fleet.

The row of an idempotency key is the claim (DESIGN.md "A fleet"). Whoever works on a record
holds its **lease** (:class:`Held`): an upload, a pull, the shipper, a settle. A commit then
goes, under the lease:

1. **intent**: the row names the exact key the object will have, with its sha256 and size
   (a write fenced by the lease);
2. **commit**: storage makes the object visible at that key, never overwriting (a taken key:
   the next variant is named in the row first, then committed);
3. **completed**: the row says so and the lease is given up, in one write.

A 2xx is sent only after 3, so it means the object and a completed row both exist. A failure
before 2 removes what was staged and marks the row failed. Between 2 and 3 nothing is ever
deleted (a completing write whose caller gave up may still commit): every crash or error
there leaves the intent in the row and the lease to expire, and whoever takes the lease
over next (the PBX's retry, on any instance, or the sweeper, :meth:`Commits.sweep`) first
**settles** the row: the object its intent names is in storage with the recorded size and
sha256 (or, in S3, record id) → completed; otherwise the multipart upload the row names is
aborted and the intent dropped. So a 2xx is never sent for a recording that is not stored,
and no recording is stored twice, whichever instance a retry reaches and wherever one
stopped.

Leases last ``catalog.lease_ttl`` seconds and are renewed every third of that while their
work makes progress (bytes flow). A request for a recording whose lease another upload
holds waits up to ``catalog.lease_wait`` seconds for it (woken at once when the holder is
in this process), then answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from recsink import logs
from recsink.catalog import (
    Catalog,
    Conflict,
    Lease,
    Recording,
    Status,
    utcnow,
)
from recsink.config import CatalogSettings
from recsink.errors import RecsinkError, Unavailable
from recsink.storage import (
    CommitUncertain,
    KeyTaken,
    MultipartUpload,
    Staging,
    Storage,
    Stored,
)
from recsink.storage.keys import following


class RecordingBusy(Unavailable):
    """Another upload holds the recording's lease and did not finish within
    ``catalog.lease_wait`` seconds."""

    def __init__(self, waited: float) -> None:
        super().__init__("recording_busy", f"another upload of this recording is running "
                         f"(waited {waited:g} s); try again shortly", retry_after=5)


@dataclass(eq=False)
class Held:
    """A record this process holds the lease of, and the row as it last saw it."""

    record: Recording
    lease: Lease
    #: Progress since the keeper last renewed (bytes moved).
    moved: bool = True
    #: While False (receiving a body), the lease is renewed only after progress.
    committing: bool = False
    #: The lease was taken over by someone else meanwhile (its work should stop).
    lost: bool = False
    #: A failure left something (an intent, a multipart upload) for a settle to look at.
    leftover: bool = False
    #: More columns for the write that settles the record (a pull's state, for one).
    settles: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.record.id


class Commits:
    """The protocol's steps over one catalog and one storage; see the module docstring."""

    def __init__(self, catalog: Catalog, storage: Storage, settings: CatalogSettings) -> None:
        self.catalog = catalog
        self.storage = storage
        self.settings = settings
        #: This process, in every lease it writes: host, pid and a random tail.
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"
        self._seq = itertools.count(1)
        self._held: set[Held] = set()
        self._released: dict[str, asyncio.Event] = {}  # idempotency key -> wake-up
        #: Called after a write that changed a record's status (wakes the webhook
        #: dispatcher: the change may have written an event).
        self.on_status: Callable[[], None] | None = None
        self._log = logs.get_logger()

    @property
    def ttl(self) -> float:
        return self.settings.lease_ttl

    def new_owner(self) -> str:
        """A lease owner token of this process, never used before."""
        return f"{self.owner}/{next(self._seq)}"

    def hold(self, record: Recording, owner: str) -> Held:
        """Keep the lease ``owner`` has on ``record`` alive (see :meth:`keep_alive`)."""
        held = Held(record, Lease(record.id, owner))
        self._held.add(held)
        return held

    def drop(self, held: Held) -> None:
        """Stop keeping ``held``'s lease alive (it was released, or left to expire)."""
        self._held.discard(held)
        key = held.record.idempotency_key
        if key is not None and (event := self._released.pop(key, None)) is not None:
            event.set()  # every waiter looks again; the next ones wait on a new event

    # -- taking records ------------------------------------------------------------------------

    async def take(self, record: Recording) -> Held | Recording:
        """Hold the row of ``record.idempotency_key``: ``record`` inserted, or the key's
        unsettled row taken over and settled. Returns the settled row instead when the
        recording is stored (or discarded) already, by anyone, meanwhile included. Raises
        :class:`RecordingBusy` when another holder keeps it beyond ``lease_wait``, and the
        catalog's and storage's errors."""
        key = record.idempotency_key
        assert key is not None
        deadline = time.monotonic() + self.settings.lease_wait
        delay = 0.02
        while True:
            owner = self.new_owner()
            row = await self.catalog.acquire(record, Lease(record.id, owner), self.ttl)
            if row is not None:
                held = self.hold(row, owner)
                if row.id == record.id:
                    return held
                try:
                    settled = await self.settle(held)
                except BaseException:
                    await self.leave(held)
                    raise
                if settled is not None:
                    return settled
                return held
            existing = await self.catalog.by_key(key)
            if existing is None:
                continue  # gone meanwhile (a content-keyed duplicate's row): try again
            if existing.settled:
                return existing
            delay = await self._wait(key, deadline, delay)

    async def create(self, record: Recording) -> Held:
        """Insert ``record`` (its key depends on its content: none yet) and hold it."""
        owner = self.new_owner()
        row = await self.catalog.create(record, Lease(record.id, owner), self.ttl)
        return self.hold(row, owner)

    async def bind(self, held: Held, key: str) -> Recording | None:
        """Give ``held`` (a record without a key) the content key ``key``; the settled
        record of ``key`` instead (``held`` is then a duplicate) when there is one. An
        unsettled record of the key that nobody holds is settled first (it may be this
        content, committed by an upload that stopped) and loses the key otherwise. Raises
        :class:`RecordingBusy`."""
        deadline = time.monotonic() + self.settings.lease_wait
        delay = 0.02
        while True:
            try:
                held.record = await self.catalog.update(held.id, held.lease,
                                                        idempotency_key=key)
                return None
            except Conflict:
                pass
            other = await self.catalog.by_key(key)
            if other is None:
                continue
            if other.settled:
                return other
            owner = self.new_owner()
            taken = await self.catalog.take(other.id, Lease(other.id, owner), self.ttl)
            if taken is None:
                delay = await self._wait(key, deadline, delay)
                continue
            rival = self.hold(taken, owner)
            try:
                settled = await self.settle(rival)
                if settled is not None:
                    return settled
                await self.release(rival, idempotency_key=None, status=Status.FAILED,
                                   error=taken.error or "interrupted")
            except BaseException:
                await self.leave(rival)
                raise

    async def _wait(self, key: str, deadline: float, delay: float) -> float:
        """Wait for the holder of ``key`` (woken when it is this process's); the next
        delay. Raises :class:`RecordingBusy` past ``deadline``."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise RecordingBusy(self.settings.lease_wait)
        event = self._released.setdefault(key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), min(delay, left))
        if self._released.get(key) is event and not any(
                h.record.idempotency_key == key for h in self._held):
            del self._released[key]  # the holder is another process's: nobody here sets it
        return min(delay * 2, 1.0)

    # -- settling ------------------------------------------------------------------------------

    async def settle(self, held: Held) -> Recording | None:
        """Settle what the previous holder of ``held``'s row left: the completed row when
        its intent's object is in storage with the recorded size and sha256 (or record id),
        else None once its multipart upload is aborted and its intent dropped. Raises
        storage errors (try again later)."""
        row = held.record
        if row.intent:
            assert row.storage_key is not None
            found = await self.storage.find(row.storage_key)
            if found is not None and found.size == row.byte_size and (
                    found.sha256 == row.sha256 if found.sha256 else found.record_id == row.id):
                self._log.info("recording.settled", id=row.id, storage_key=row.storage_key,
                               call_id=row.call_id, recording_id=row.recording_id)
                return await self.complete(held, found.stored)
        values: dict[str, Any] = {}
        if row.upload_id is not None and row.upload_key is not None:
            await self.storage.discard(MultipartUpload(row.upload_key, row.upload_id))
            values.update(upload_key=None, upload_id=None)
        if row.storage_key is not None and not row.settled:  # a completed one is shipping
            values.update(storage_key=None)
        if values:
            held.record = await self.catalog.update(row.id, held.lease, **values)
        return None

    async def sweep(self, limit: int = 64, now: datetime | None = None) -> tuple[int, int]:
        """Settle records whose holder stopped: their lease expired (before ``now``), or,
        in a catalog no other process shares, another process holds it. A record whose
        object is stored completes; any other fails (``interrupted``), unless it waits for
        a pull. Returns (completed, failed)."""
        completed = failed = 0
        owner = self.new_owner()
        for row in await self.catalog.claim("settle", owner, self.ttl, limit, now=now):
            held = self.hold(row, owner)
            try:
                if await self.settle(held) is not None:
                    completed += 1
                elif held.record.pull_state == "pending" or held.record.status is not \
                        Status.UPLOADING:
                    await self.release(held)
                else:
                    await self.release(held, status=Status.FAILED,
                                       error=row.error or "interrupted")
                    failed += 1
            except RecsinkError as exc:
                await self.leave(held)
                self._log.warning("settle.failed", id=row.id, error=exc.reason())
        return completed, failed

    async def sweep_forever(self, interval: float) -> None:
        """:meth:`sweep` every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                while sum(await self.sweep()):
                    pass
            except RecsinkError as exc:  # the catalog or storage is down: next time
                self._log.warning("settle.deferred", error=exc.reason())

    # -- committing ----------------------------------------------------------------------------

    async def upload_opened(self, held: Held, upload: MultipartUpload) -> None:
        """Record the multipart upload ``held``'s upload opened (before any part is sent)."""
        held.record = await self.catalog.update(
            held.id, held.lease, upload_key=upload.key, upload_id=upload.upload_id)

    def recorder(self, held: Held) -> Callable[[MultipartUpload], Awaitable[None]]:
        """:meth:`upload_opened` for ``held``, as storage's ``on_upload``."""

        async def record(upload: MultipartUpload) -> None:
            await self.upload_opened(held, upload)

        return record

    async def commit(self, held: Held, staging: Staging, base: str, **facts: Any) -> Recording:
        """Steps 1-3 of the module docstring for ``staging`` (finished), meant for
        ``staging.key``, a variant of ``base``; ``facts`` are the columns known now (sha256,
        byte_size, format, …). Returns the completed row. Raises storage and catalog errors;
        :class:`~recsink.storage.CommitUncertain` leaves the intent to be settled."""
        held.committing = True
        key = staging.key
        while True:
            held.record = await self.catalog.update(held.id, held.lease, storage_key=key,
                                                    **facts)
            try:
                stored = await staging.commit(key, held.record.object_metadata())
                break
            except KeyTaken:
                key = following(base, key)
            except CommitUncertain:
                held.leftover = True
                raise
        try:
            return await self.complete(held, stored)
        except BaseException:
            # The object is in place and the intent names it; the completing write may
            # even have committed. Never delete: the next taker settles it.
            held.leftover = True
            raise

    async def complete(self, held: Held, stored: Stored, **values: Any) -> Recording:
        """Mark ``held``'s record completed with its object at ``stored`` and give the lease
        up (one write); queued for shipping when the object waits in a spool."""
        spool = getattr(self.storage, "spool_id", None) if stored.pending else None
        return await self.release(
            held, status=Status.COMPLETED, storage_key=stored.key, storage_url=stored.url,
            error=None, upload_key=None, upload_id=None,
            ship_state="pending" if stored.pending else None,
            next_ship_at=utcnow() if stored.pending else None, ship_spool=spool,
            **{**held.settles, **values})

    # -- giving leases up ------------------------------------------------------------------------

    async def release(self, held: Held, **values: Any) -> Recording:
        """Set ``values`` and give the lease up."""
        try:
            held.record = await self.catalog.release(held.lease, **values)
            if "status" in values and self.on_status is not None:
                self.on_status()
            return held.record
        finally:
            self.drop(held)

    async def leave(self, held: Held, **values: Any) -> None:
        """Set ``values`` and let the lease expire now, keeping it in the row: something
        may be left to settle (an intent, a multipart upload), and the next taker or the
        sweeper settles it. Never raises (a catalog that fails here leaves the lease to
        expire on its own)."""
        try:
            held.record = await self.catalog.update(held.id, held.lease, lease_until=utcnow(),
                                                    **values)
        except RecsinkError as exc:
            self._log.warning("lease.left", id=held.id, error=exc.reason())
        finally:
            self.drop(held)

    # -- keeping leases alive ----------------------------------------------------------------------

    async def keep_alive(self) -> None:
        """Renew every held lease every third of ``lease_ttl`` while its work moves (bytes
        flowed since the last round, or it is committing); runs until cancelled."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            due = [h for h in self._held if h.moved or h.committing]
            for held in due:
                held.moved = False
            results = await asyncio.gather(
                *(self.catalog.renew(h.lease, self.ttl) for h in due), return_exceptions=True)
            for held, result in zip(due, results, strict=True):
                if result is False:
                    held.lost = True
                    self._held.discard(held)
                    self._log.warning("lease.lost", id=held.id)
                elif isinstance(result, BaseException):
                    self._log.warning("lease.renew_failed", id=held.id, error=str(result))
