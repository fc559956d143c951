"""The one byte path: cap, sniff, hash and stream a recording into storage, then commit it
exactly once.

Every recording goes through :meth:`Ingestor.ingest`, whatever its source (DESIGN.md "One
byte path"). Source adapters hand it an :class:`Intake`: who the recording is, what the sender
said about it, and a :class:`Body` to read. Ingest then:

1. answers 413 before reading when the declared length is over ``ingest.max_bytes``;
2. answers 200 with the existing record, without reading, when the sender's recording id is
   already stored (the idempotency key is known up front);
3. reads the first bytes and sniffs the format (415 for anything but an allowed format);
4. streams the body into a storage staging object in ``ingest.chunk_size`` blocks, hashing
   (sha256, and MD5 when Content-MD5 was sent) in a worker thread while the block is written,
   and counting bytes against the cap (413) and the declared length (400);
5. makes the staged bytes durable, reads duration, sample rate and channels from them;
6. commits under a lock on the idempotency key: a key already settled makes this upload a
   duplicate (staging discarded, 200); otherwise the catalog records the intended object
   first, then storage commits it (never overwriting), then the catalog marks it completed
   and the answer is 201.

On any failure, including a client that disconnects, the staging object is discarded, the
record is marked ``failed`` and nothing is committed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import mmap
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol

from recsink import logs
from recsink.audio import (
    EDGE_BYTES,
    PROBE_MAX_BYTES,
    SNIFF_BYTES,
    AudioFacts,
    Format,
    is_probe,
    probe,
    probe_parts,
    sniff,
)
from recsink.catalog import SETTLED, Catalog, Recording, Status, new_id, utcnow
from recsink.config import IngestSettings
from recsink.errors import RecsinkError, bad_request, unavailable
from recsink.metrics import Metrics
from recsink.storage import (
    AlreadyStored,
    Claim,
    ClaimBusy,
    Existing,
    Staging,
    Storage,
    StorageError,
    Stored,
)
from recsink.storage.keys import render_key

#: Blocks are multiples of this many bytes (and so of any O_DIRECT alignment).
MIN_BLOCK = 64 * 1024


class Body(Protocol):
    """A recording's bytes as they arrive."""

    async def read(self, n: int) -> bytes:
        """Some bytes, about ``n`` (> 0) and never none before the end; ``b""`` once the
        body is complete. Raises
        :class:`recsink.errors.RecsinkError` when the body breaks off (client gone: 400,
        silent too long: 408, malformed framing: 400)."""


@dataclass(frozen=True)
class Intake:
    """One recording handed to ingest by a source adapter.

    ``recording_id`` is the sender's own id for the recording and, when given, the
    idempotency key. ``started_at`` is UTC; ``duration_ms`` is what the sender claims,
    in milliseconds (the measured duration wins when the file has one).
    ``content_length``: bytes the body declares, checked against what arrives;
    ``content_md5``: the 16-byte digest from a Content-MD5 header. ``allow_probe``
    admits Kazoo's text credentials probe (specs/kazoo.md §5.5). ``key`` overrides the
    idempotency key (a pull attaches the bytes to the record its callback created).
    """

    source: str
    body: Body
    recording_id: str | None = None
    call_id: str | None = None
    interaction_id: str | None = None
    account_id: str | None = None
    owner_id: str | None = None
    from_uri: str | None = None
    to_uri: str | None = None
    started_at: datetime | None = None
    duration_ms: int | None = None
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    content_length: int | None = None
    content_md5: bytes | None = None
    allow_probe: bool = False
    #: The idempotency key, when the source decided it (a pulled recording's record).
    key: str | None = None

    @property
    def idempotency_key(self) -> str | None:
        """The key known before reading: the source's, else the sender's recording id."""
        if self.key is not None:
            return self.key
        return f"{self.source}:rid:{self.recording_id}" if self.recording_id else None

    def content_key(self, sha256: str) -> str:
        """The key for a recording the sender did not name: call id and content hash."""
        return f"{self.source}:sha:{self.call_id or ''}:{sha256}"


@dataclass(frozen=True)
class Outcome:
    """What ingest did: ``created`` is True when this request stored a new recording
    (answer 201), False for a duplicate or a discarded recording (answer 200)."""

    record: Recording
    created: bool


class KeyedLocks:
    """One asyncio lock per key, alive only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class _Blocks:
    """Reads a :class:`Body` into blocks, counting every byte read."""

    def __init__(self, body: Body) -> None:
        self._body = body
        self._over = b""  # read past the end of the last block filled
        self.total = 0

    async def read(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the body."""
        buffer = bytearray(n)
        return bytes(buffer[:await self.fill(memoryview(buffer))])

    async def fill(self, view: memoryview) -> int:
        """Fill ``view`` from the body; the bytes filled, fewer than ``len(view)`` only at
        the end of the body."""
        got, room = 0, len(view)
        while got < room:
            if self._over:
                data, self._over = self._over, b""
            else:
                data = await self._body.read(room - got)
                if not data:
                    break
                self.total += len(data)
            n = min(len(data), room - got)
            view[got:got + n] = memoryview(data)[:n]
            if n < len(data):  # a body may return a little more than asked
                self._over = data[n:]
            got += n
        return got


@dataclass
class _Attempt:
    """One upload attempt in flight: what it reads, where it writes, what it holds."""

    intake: Intake
    started: float
    blocks: _Blocks
    fmt: Format
    record: Recording
    claim: Claim | None = None
    staging: Staging | None = None
    sha256: str = ""
    head: bytes = b""  # the body's first EDGE_BYTES, for probe_parts
    tail: bytes = b""  # the body's last EDGE_BYTES, for probe_parts

    async def drop(self) -> None:
        """Throw the staged bytes away and give up the claim (never raises)."""
        if self.staging is not None:
            await self.staging.abort()
        if self.claim is not None:
            claim, self.claim = self.claim, None
            await claim.release()


class Ingestor:
    """The pipeline; one per application, shared by every source."""

    def __init__(
        self,
        settings: IngestSettings,
        key_template: str,
        storage: Storage,
        catalog: Catalog,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.key_template = key_template
        self.storage = storage
        self.catalog = catalog
        self.metrics = metrics
        self._locks = KeyedLocks()
        # Attempts running per record id: a record shared by concurrent attempts (same
        # recording id) is only marked failed when the last of them fails.
        self._running: Counter[str] = Counter()
        self._streaming = 0  # uploads between their first and last block
        self._block_bytes = 0  # their blocks, bytes
        self._log = logs.get_logger()

    def check_length(self, declared: int | None) -> None:
        """Raise 413 when a declared body length is over the cap (before reading)."""
        if declared is not None and declared > self.settings.max_bytes:
            raise RecsinkError(
                413, "too_large",
                f"body of {declared} bytes is over the {self.settings.max_bytes}-byte limit",
                bytes=0)

    async def ingest(self, intake: Intake) -> Outcome:
        """Store ``intake`` exactly once; see the module docstring for the steps.

        Raises :class:`RecsinkError`: 400 (length or Content-MD5 mismatch, body broke off),
        408 (body silent too long), 413 (over the cap), 415 (not an allowed format),
        503 (storage or catalog unavailable, or another instance storing the same recording),
        507 (storage full).
        """
        started = time.perf_counter()
        self.check_length(intake.content_length)
        key = intake.idempotency_key
        claim: Claim | None = None
        try:
            existing = await self.catalog.by_key(key) if key is not None else None
            if existing is not None and existing.status in SETTLED:
                return self._duplicate(intake, existing, started)
            blocks = _Blocks(intake.body)
            head = await blocks.read(SNIFF_BYTES)
            fmt = self._format(head, intake)
            if key is not None:
                claimed = await self._claim(intake, key)
                if isinstance(claimed, Recording):
                    return self._duplicate(intake, claimed, started)
                claim = claimed
            record = await self.catalog.begin(self._new_record(intake, key))
        except BaseException as exc:
            if claim is not None:
                await asyncio.shield(claim.release())
            if isinstance(exc, sqlite3.Error):
                raise _catalog_error(exc) from exc
            raise
        if record.status in SETTLED:  # stored by a concurrent attempt since the check above
            if claim is not None:
                # Keep the claim naming the stored object, for the other instances.
                await (claim.settle(record.storage_key) if record.storage_key
                       else claim.release())
            return self._duplicate(intake, record, started)

        attempt = _Attempt(intake, started, blocks, fmt, record, claim)
        self._running[record.id] += 1
        self.metrics.in_flight.inc()
        try:
            attempt.staging = await self.storage.open_staging(
                self._planned_key(intake, record, fmt), record.object_metadata())
            await self._stream(attempt, head)
            local = await attempt.staging.finish()
            facts: AudioFacts
            if local is not None:
                facts = await asyncio.to_thread(probe, local, fmt)
            else:
                facts = await asyncio.to_thread(
                    probe_parts, attempt.head, attempt.tail, blocks.total, fmt)
            return await self._commit(attempt, facts)
        except BaseException as exc:
            error = self._as_http_error(exc)
            reason = error.error if error is not None else type(exc).__name__
            await asyncio.shield(self._fail(attempt, reason))
            if error is None:
                raise
            error.fields.setdefault("bytes", blocks.total)
            error.fields["record_id"] = record.id
            if error is exc:
                raise
            raise error from exc
        finally:
            self._running[record.id] -= 1
            if not self._running[record.id]:
                del self._running[record.id]
            self.metrics.in_flight.dec()

    async def _claim(self, intake: Intake, key: str) -> Claim | Recording:
        """Claim ``key`` across instances sharing the storage: the claim, or the record of
        the recording another instance already stored (adopted into this catalog)."""
        try:
            claimed = await self.storage.claim(key)
        except ClaimBusy as exc:
            raise unavailable("claimed_elsewhere", str(exc), retry_after=exc.retry_after,
                              ) from exc
        except StorageError as exc:
            raise self._storage_error(exc) from exc
        if isinstance(claimed, Existing):
            found = Recording.from_object_metadata(
                claimed.meta, claimed.key, self.storage.url(claimed.key))
            found.idempotency_key = key
            return await self.catalog.adopt(found)
        return claimed

    def _format(self, head: bytes, intake: Intake) -> Format:
        fmt = sniff(head)
        if fmt is None and intake.allow_probe and is_probe(head):
            return Format.PROBE
        if fmt is None or fmt.value not in self.settings.formats:
            what = "an empty body" if not head else f"a body starting {head[:8]!r}"
            raise RecsinkError(
                415, "unsupported_format",
                f"{what} is not a recording in an accepted format "
                f"({', '.join(self.settings.formats)}); the format is read from the bytes",
                bytes=len(head))
        return fmt

    def _planned_key(self, intake: Intake, record: Recording, fmt: Format) -> str:
        """Where the recording is meant to be stored (``storage.key_template``)."""
        return render_key(
            self.key_template,
            {"account_id": intake.account_id, "owner_id": intake.owner_id,
             "call_id": intake.call_id, "recording_id": intake.recording_id or record.id,
             "id": record.id, "source": intake.source, "ext": fmt.value},
            intake.started_at or record.received_at)

    def _new_record(self, intake: Intake, key: str | None) -> Recording:
        metadata = dict(intake.metadata)
        if intake.owner_id:
            metadata.setdefault("owner_id", intake.owner_id)
        return Recording(
            id=new_id(), source=intake.source, status=Status.UPLOADING, received_at=utcnow(),
            idempotency_key=key, recording_id=intake.recording_id, call_id=intake.call_id,
            interaction_id=intake.interaction_id, account_id=intake.account_id,
            from_uri=intake.from_uri, to_uri=intake.to_uri, started_at=intake.started_at,
            duration_ms=intake.duration_ms, name=intake.name, metadata=metadata)

    def block_size(self) -> int:
        """Bytes per block for an upload starting now: ``ingest.chunk_size``, or its share
        of ``ingest.buffer_bytes`` among the uploads streaming, or what is left of that
        budget, whichever is least; a multiple of :data:`MIN_BLOCK`, at least that (so
        memory passes the budget by at most MIN_BLOCK per upload)."""
        budget = self.settings.buffer_bytes
        size = min(self.settings.chunk_size, budget // (self._streaming + 1),
                   budget - self._block_bytes)
        return max(MIN_BLOCK, size // MIN_BLOCK * MIN_BLOCK)

    async def _stream(self, attempt: _Attempt, head: bytes) -> None:
        """Body → (sha256, MD5) and staging, one block at a time; keeps the body's first
        and last EDGE_BYTES for :func:`~recsink.audio.probe_parts` and sets
        ``attempt.sha256`` once the body is complete and checked.

        The block is one page-aligned buffer per upload (so disk storage can write it with
        O_DIRECT), of :meth:`block_size` bytes, filled in place and handed to storage with
        the hashing: one thread hop per block, no copy made per block."""
        intake, blocks, staging = attempt.intake, attempt.blocks, attempt.staging
        assert staging is not None
        cap = PROBE_MAX_BYTES if attempt.fmt is Format.PROBE else self.settings.max_bytes
        sha256 = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False) if intake.content_md5 is not None else None
        digest = partial(_update, sha256, md5)
        received = self.metrics.bytes_received.labels(intake.source)
        edges = not self.storage.local_files
        size = self.block_size()
        buffer = mmap.mmap(-1, size)
        self._block_bytes += size
        self._streaming += 1
        try:
            with memoryview(buffer) as view:
                view[:len(head)] = head
                filled = len(head) + await blocks.fill(view[len(head):])
                if edges:
                    attempt.head = bytes(view[:min(filled, EDGE_BYTES)])
                while filled:
                    if blocks.total > cap:
                        raise RecsinkError(413, "too_large", f"body is over the {cap}-byte limit")
                    block = view[:filled]
                    await staging.write(block, digest)
                    received.inc(filled)
                    if edges:
                        attempt.tail = (bytes(block[-EDGE_BYTES:]) if filled >= EDGE_BYTES
                                        else (attempt.tail + bytes(block))[-EDGE_BYTES:])
                    block.release()
                    filled = await blocks.fill(view) if filled == size else 0
        finally:
            self._block_bytes -= size  # the buffer is unmapped once its last view is gone
            self._streaming -= 1
        if intake.content_length is not None and blocks.total != intake.content_length:
            raise bad_request(
                "length_mismatch",
                f"received {blocks.total} bytes, Content-Length said {intake.content_length}")
        if md5 is not None and md5.digest() != intake.content_md5:
            raise bad_request(
                "content_md5_mismatch", "the body's MD5 differs from the Content-MD5 header")
        attempt.sha256 = sha256.hexdigest()

    async def _commit(self, attempt: _Attempt, facts: AudioFacts) -> Outcome:
        intake, record, staging = attempt.intake, attempt.record, attempt.staging
        assert staging is not None
        size, started = attempt.blocks.total, attempt.started
        key = intake.idempotency_key or intake.content_key(attempt.sha256)
        async with self._locks.hold(key):
            existing = await self.catalog.by_key(key)
            if existing is not None and existing.status in SETTLED:
                await attempt.drop()
                if existing.id != record.id:
                    await self.catalog.delete(record.id)
                return self._duplicate(intake, existing, started, bytes=size)
            if existing is not None and existing.id != record.id:
                # An earlier attempt with the same content that never completed.
                await self.catalog.release_key(existing.id)
            if attempt.claim is None:  # the key depends on the content: claim it now
                claimed = await self._claim(intake, key)
                if isinstance(claimed, Recording):
                    await attempt.drop()
                    await self.catalog.delete(record.id)
                    return self._duplicate(intake, claimed, started, bytes=size)
                attempt.claim = claimed

            duration_ms = facts.duration_ms
            if duration_ms is None:
                duration_ms = intake.duration_ms
            facts_columns: dict[str, Any] = dict(
                idempotency_key=key, sha256=attempt.sha256, byte_size=size,
                format=attempt.fmt.value, media_type=attempt.fmt.media_type,
                channels=facts.channels, sample_rate=facts.sample_rate, duration_ms=duration_ms,
                stopped_at=(intake.started_at + timedelta(milliseconds=duration_ms)
                            if intake.started_at and duration_ms is not None else None))

            minimum = self.settings.min_duration_ms
            if (attempt.fmt is not Format.PROBE and duration_ms is not None
                    and duration_ms < minimum):
                await attempt.drop()
                record = await self.catalog.update(
                    record.id, status=Status.DISCARDED,
                    error=f"shorter than ingest.min_duration_ms ({duration_ms} < {minimum} ms)",
                    **facts_columns)
                self._finish("discarded", intake, record, started, bytes=size)
                return Outcome(record, created=False)

            # Intent first: a crash after the commit below is recovered from this row.
            record = await self.catalog.update(
                record.id, storage_key=staging.key, **facts_columns)
            try:
                stored = await staging.commit(record.object_metadata())
            except AlreadyStored as same:  # another attempt stored these very bytes there
                await staging.abort()
                assert attempt.claim is not None
                await attempt.claim.settle(same.key)
                record = await self.catalog.update(
                    record.id, **_completed(Stored(same.key, self.storage.url(same.key))))
                return self._duplicate(intake, record, started, bytes=size)
            # The claim is settled before the record completes: a crash in between leaves
            # the record "uploading" with its intent, which recover() settles from storage.
            # (The other way round, a crash would leave a completed record whose claim
            # says "uploading", and another instance would store a second copy.)
            assert attempt.claim is not None
            if stored.pending:
                # Spooled: whoever ships first stores it; the shipper claims again then.
                await attempt.claim.release()
            else:
                await attempt.claim.settle(stored.key)
            try:
                record = await self.catalog.update(record.id, **_completed(stored))
            except BaseException:
                # Not acknowledged, so not kept: the PBX's retry stores it afresh (a
                # claim naming a vanished object is taken over).
                await asyncio.shield(self.storage.delete(stored.key))
                raise
        self._finish("stored", intake, record, started, bytes=size, sha256=attempt.sha256,
                     storage_key=stored.key, spooled=stored.pending)
        return Outcome(record, created=True)

    def _duplicate(
        self, intake: Intake, record: Recording, started: float, bytes: int = 0
    ) -> Outcome:
        self._finish("duplicate", intake, record, started, bytes=bytes,
                     sha256=record.sha256, existing_status=str(record.status))
        return Outcome(record, created=False)

    def _finish(
        self, result: str, intake: Intake, record: Recording, started: float, **fields: Any
    ) -> None:
        elapsed = time.perf_counter() - started
        self.metrics.uploads.labels(intake.source, result).inc()
        self.metrics.upload_seconds.labels(intake.source).observe(elapsed)
        self._log.info(
            f"recording.{result}", source=intake.source, id=record.id,
            call_id=record.call_id, recording_id=record.recording_id,
            format=record.format, duration_ms=record.duration_ms,
            elapsed_ms=round(elapsed * 1000, 1), **fields)

    async def _fail(self, attempt: _Attempt, reason: str) -> None:
        """Drop the attempt; mark its record failed with ``reason`` (the error code the
        client was answered) unless another attempt on it still runs."""
        await attempt.drop()
        record = attempt.record
        if self._running[record.id] > 1:
            return  # another attempt on this record is still running
        try:
            current = await self.catalog.get(record.id)
            if current is not None and current.status not in SETTLED:
                await self.catalog.update(record.id, status=Status.FAILED, error=reason)
        except Exception as db_exc:  # the original error is what the client needs to see
            self._log.error("catalog.error", id=record.id, error=repr(db_exc))

    def _as_http_error(self, exc: BaseException) -> RecsinkError | None:
        """The answer for a failed upload; None for errors that are not the client's
        business (cancellation, bugs), which propagate as they are."""
        if isinstance(exc, RecsinkError):
            return exc
        if isinstance(exc, StorageError):
            return self._storage_error(exc)
        if isinstance(exc, sqlite3.Error):
            return _catalog_error(exc)
        return None

    def _storage_error(self, exc: StorageError) -> RecsinkError:
        self.metrics.storage_errors.inc()
        if exc.full:
            return RecsinkError(507, "storage_full", str(exc))
        return unavailable("storage_unavailable", str(exc))

    async def recover(self) -> tuple[int, int]:
        """Settle records left ``uploading`` by a stopped process (call before serving):
        one whose intended object is in storage with the recorded size and sha256 becomes
        ``completed``, any other ``failed``. Returns (completed, failed)."""
        completed = failed = 0
        for record in await self.catalog.interrupted():
            found = None
            if record.storage_key and record.sha256:
                found = await self.storage.find(record.storage_key)
            if found is not None and (found.size, found.sha256) == (
                    record.byte_size, record.sha256):
                await self.catalog.update(record.id, **_completed(found.stored))
                completed += 1
                if record.idempotency_key is not None and not found.stored.pending:
                    try:
                        await self.storage.settle_recovered(
                            record.idempotency_key, found.stored.key)
                    except StorageError as exc:
                        self._log.warning("claim.settle_failed", id=record.id,
                                          error=str(exc))
            else:
                await self.catalog.update(
                    record.id, status=Status.FAILED, error="interrupted")
                failed += 1
        return completed, failed


def _completed(stored: Stored) -> dict[str, Any]:
    """The catalog columns of a record whose object is committed at ``stored``: completed,
    and queued for the shipper when the object waits in the spool."""
    return dict(status=Status.COMPLETED, storage_key=stored.key, storage_url=stored.url,
                error=None, ship_state="pending" if stored.pending else None,
                next_ship_at=utcnow() if stored.pending else None)


def _catalog_error(exc: sqlite3.Error) -> RecsinkError:
    """The answer when the catalog cannot record an upload: nothing was committed."""
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
        return RecsinkError(507, "storage_full", f"catalog: {exc}")
    return unavailable("catalog_unavailable", f"catalog: {exc}")


def _update(sha256: Any, md5: Any, block: memoryview) -> None:
    sha256.update(block)
    if md5 is not None:
        md5.update(block)


def decode_content_md5(value: str | None) -> bytes | None:
    """The 16-byte digest of a ``Content-MD5`` header (base64, RFC 1864). Raises 400."""
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        digest = b""
    if len(digest) != 16:
        raise bad_request("bad_content_md5", "Content-MD5 must be a base64 MD5 digest")
    return digest
