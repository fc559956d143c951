"""The one byte path: cap, sniff, hash and stream a recording into storage, then commit it
exactly once.

Every recording goes through :meth:`Ingestor.ingest`, whatever its source (DESIGN.md "One
byte path"). Source adapters hand it an :class:`Intake`: who the recording is, what the sender
said about it, and a :class:`Body` to read. Ingest then:

1. refuses before reading a declared length over ``ingest.max_bytes`` (:class:`TooLarge`);
2. answers with the existing record, without reading, when the sender's recording id is
   already stored (the idempotency key is known up front);
3. reads the first bytes, sniffs the format (:class:`NotAudio` for anything else), and
   holds the record's lease in the catalog (:mod:`recsink.commit`): the row of its key, or
   a new row when the key depends on the content; a recording another upload is storing
   right now is waited for, then is a duplicate (or 503 after ``catalog.lease_wait``);
4. streams the body into a storage staging object in ``ingest.chunk_size`` blocks, hashing
   (sha256, and MD5 when Content-MD5 was sent) in a worker thread while the block is written,
   and counting bytes against the cap and the declared length;
5. makes the staged bytes durable, reads duration, sample rate and channels from them;
6. gives a recording without a recording id its content key (call id and sha256), which may
   make it a duplicate of one stored before; then commits (intent, storage commit,
   completed: :meth:`recsink.commit.Commits.commit`).

On any failure, including a client that disconnects, the staging object is discarded and the
record is marked ``failed``; a commit whose outcome is unknown leaves its intent to be settled.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import mmap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol, TypeVar, runtime_checkable

import aiojobs

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
from recsink.catalog import Catalog, LeaseLost, Recording, Status, new_id, utcnow
from recsink.commit import Commits, Held
from recsink.config import IngestSettings
from recsink.errors import Malformed, NotAudio, RecsinkError, TooLarge
from recsink.metrics import Metrics
from recsink.storage import Staging, Storage, StorageError, ThreadWritable
from recsink.storage.keys import render_key

#: Blocks are multiples of this many bytes (and so of any O_DIRECT alignment).
MIN_BLOCK = 64 * 1024

_T = TypeVar("_T")

class Body(Protocol):
    """A recording's bytes as they arrive."""

    async def read(self, n: int) -> bytes:
        """Some bytes, about ``n`` (> 0) and never none before the end; ``b""`` once the
        body is complete. Raises :class:`~recsink.errors.RecsinkError` when the body breaks
        off (client gone: :class:`~recsink.errors.Malformed`, silent too long:
        :class:`~recsink.errors.Stalled`, malformed framing)."""


class BlockReader(Protocol):
    """The rest of a body, read with blocking calls by a worker thread."""

    def fill(self, view: memoryview) -> int:
        """Blocking: fill ``view`` with the body's next bytes; fewer only at its end.
        Raises :class:`~recsink.errors.RecsinkError` like :meth:`Body.read`."""

    def interrupt(self) -> None:
        """Make a :meth:`fill` in progress fail soon (from any thread)."""


@runtime_checkable
class DirectBody(Protocol):
    """A :class:`Body` whose rest can be read off the event loop."""

    def direct(self) -> BlockReader | None:
        """The rest of the body for a worker thread, or None to keep reading it with
        :meth:`Body.read`. Once it returns a reader, the body is read only through it."""


@dataclass(frozen=True)
class Intake:
    """One recording handed to ingest by a source adapter.

    ``recording_id`` is the sender's own id for the recording and, when given, the
    idempotency key. ``started_at`` is UTC; ``duration_ms`` is what the sender claims,
    in milliseconds (the measured duration wins when the file has one).
    ``content_length``: bytes the body declares, checked against what arrives;
    ``content_md5``: the 16-byte digest from a Content-MD5 header. ``allow_probe``
    admits Kazoo's text credentials probe (specs/kazoo.md §5.5). ``held`` is the record's
    lease when the caller holds it already (a pull attaches the bytes to the record its
    callback created; the caller settles and releases it).
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
    held: Held | None = None

    @property
    def idempotency_key(self) -> str | None:
        """The key known before reading: the held record's, else the sender's recording
        id."""
        if self.held is not None:
            return self.held.record.idempotency_key
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


class _Blocks:
    """Reads a :class:`Body` into blocks, counting every byte read."""

    def __init__(self, body: Body) -> None:
        self._body = body
        self._over = b""  # read past the end of the last block filled
        self.total = 0
        self.reader: BlockReader | None = None  # the rest, for a worker thread

    def go_direct(self) -> BlockReader | None:
        """Read the rest of the body through its :class:`BlockReader` (from now on with
        :meth:`fill_blocking` only), when it has one."""
        if isinstance(self._body, DirectBody):
            self.reader = self._body.direct()
        return self.reader

    def read_blocking(self, n: int) -> bytes:
        """:meth:`read`, on a worker thread, through :attr:`reader`."""
        buffer = bytearray(n)
        with memoryview(buffer) as view:
            got = self.fill_blocking(view)
        return bytes(buffer[:got])

    def fill_blocking(self, view: memoryview) -> int:
        """:meth:`fill`, on a worker thread, through :attr:`reader`."""
        assert self.reader is not None
        got = 0
        if self._over:
            got = min(len(self._over), len(view))
            view[:got] = memoryview(self._over)[:got]
            self._over = self._over[got:]
        n = self.reader.fill(view[got:])
        self.total += n
        return got + n

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
    held: Held
    staging: Staging | None = None
    sha256: str = ""
    head: bytes = b""  # the body's first EDGE_BYTES, for probe_parts
    tail: bytes = b""  # the body's last EDGE_BYTES, for probe_parts


class Ingestor:
    """The pipeline; one per application, shared by every source."""

    def __init__(
        self,
        settings: IngestSettings,
        key_template: str,
        storage: Storage,
        commits: Commits,
        metrics: Metrics,
        jobs: aiojobs.Scheduler,
        threads: int = 8,
    ) -> None:
        self.settings = settings
        self.key_template = key_template
        self.storage = storage
        self.commits = commits
        self.catalog: Catalog = commits.catalog
        self.metrics = metrics
        #: Clean-up that must finish even when the request is cancelled runs as its jobs.
        self._jobs = jobs
        self._streaming = 0  # uploads between their first and last block
        self._block_bytes = 0  # their blocks, bytes
        #: Bodies read off the event loop: one thread per upload at most (``threads``, the
        #: uploads received at once), each blocking on its client's socket.
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix="recsink-body")
        self._log = logs.get_logger()

    def close(self) -> None:
        """Stop the body threads (after the last upload)."""
        self.threads.shutdown(wait=False, cancel_futures=True)

    def check_length(self, declared: int | None) -> None:
        """Raise :class:`TooLarge` when a declared body length is over the cap."""
        if declared is not None and declared > self.settings.max_bytes:
            raise TooLarge(
                "too_large",
                f"body of {declared} bytes is over the {self.settings.max_bytes}-byte limit",
                bytes=0)

    async def ingest(self, intake: Intake) -> Outcome:
        """Store ``intake`` exactly once; see the module docstring for the steps.

        Raises domain errors: :class:`Malformed` (length or Content-MD5 mismatch, body broke
        off), :class:`~recsink.errors.Stalled`, :class:`TooLarge`, :class:`NotAudio`,
        :class:`~recsink.errors.Unavailable` (storage or catalog unavailable, another
        upload of the same recording still running), :class:`~recsink.errors.Full`.
        """
        started = time.perf_counter()
        self.check_length(intake.content_length)
        key = intake.idempotency_key
        if key is not None and intake.held is None:
            existing = await self.catalog.by_key(key)
            if existing is not None and existing.settled:
                return self._duplicate(intake, existing, started)
        blocks = _Blocks(intake.body)
        if (reader := blocks.go_direct()) is not None:  # off the loop from its first byte
            head = await self._in_thread(reader, blocks.read_blocking, SNIFF_BYTES)
        else:
            head = await blocks.read(SNIFF_BYTES)
        fmt = self._format(head, intake)
        record = self._new_record(intake, key)
        if intake.held is not None:
            held = intake.held
        elif key is not None:
            taken = await self.commits.take(record)
            if isinstance(taken, Recording):
                return self._duplicate(intake, taken, started)
            held = taken
        else:
            held = await self.commits.create(record)

        attempt = _Attempt(intake, started, blocks, fmt, held)
        self.metrics.in_flight.inc()
        try:
            return await self._store(attempt, head)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):  # nobody waits: clean up as a job
                await self._jobs.spawn(self._fail(attempt, exc))
            else:
                await self._jobs.shield(self._fail(attempt, exc))
            if isinstance(exc, RecsinkError):
                exc.fields.setdefault("bytes", blocks.total)
                exc.fields["record_id"] = held.id
                if isinstance(exc, StorageError):
                    self.metrics.storage_errors.inc()
            raise
        finally:
            self.metrics.in_flight.dec()

    async def _store(self, attempt: _Attempt, head: bytes) -> Outcome:
        intake, held, blocks = attempt.intake, attempt.held, attempt.blocks
        base = self._planned_key(intake, held.record, attempt.fmt)
        attempt.staging = await self.storage.open_staging(
            base, held.record.object_metadata(), self.commits.recorder(held))
        await self._stream(attempt, head)
        local = await attempt.staging.finish()
        held.committing = True
        facts: AudioFacts
        if local is not None:
            facts = await asyncio.to_thread(probe, local, attempt.fmt)
        else:
            facts = await asyncio.to_thread(probe_parts, attempt.head, attempt.tail, blocks.total,
                                     attempt.fmt)
        if held.record.idempotency_key is None:
            found = await self.commits.bind(held, intake.content_key(attempt.sha256))
            if found is not None:
                if await attempt.staging.abort():
                    await self.catalog.delete(held.id)
                    self.commits.drop(held)
                else:  # its multipart upload is still open: the sweeper settles the row
                    await self.commits.leave(held, error="duplicate")
                return self._duplicate(intake, found, attempt.started, bytes=blocks.total)

        duration_ms = facts.duration_ms if facts.duration_ms is not None else intake.duration_ms
        columns: dict[str, Any] = dict(
            sha256=attempt.sha256, byte_size=blocks.total, format=attempt.fmt.value,
            media_type=attempt.fmt.media_type, channels=facts.channels,
            sample_rate=facts.sample_rate, duration_ms=duration_ms,
            stopped_at=(intake.started_at + timedelta(milliseconds=duration_ms)
                        if intake.started_at and duration_ms is not None else None))

        minimum = self.settings.min_duration_ms
        if attempt.fmt is not Format.PROBE and duration_ms is not None and duration_ms < minimum:
            await attempt.staging.abort()
            record = await self.commits.release(
                held, status=Status.DISCARDED, upload_key=None, upload_id=None,
                error=f"shorter than ingest.min_duration_ms ({duration_ms} < {minimum} ms)",
                **{**columns, **held.settles})
            self._finish("discarded", intake, record, attempt.started, bytes=blocks.total)
            return Outcome(record, created=False)

        record = await self.commits.commit(held, attempt.staging, base, **columns)
        self._finish("stored", intake, record, attempt.started, bytes=blocks.total,
                     sha256=attempt.sha256, storage_key=record.storage_key,
                     spooled=record.ship_state == "pending")
        return Outcome(record, created=True)

    def _format(self, head: bytes, intake: Intake) -> Format:
        fmt = sniff(head)
        if fmt is None and intake.allow_probe and is_probe(head):
            return Format.PROBE
        if fmt is None or fmt.value not in self.settings.formats:
            what = "an empty body" if not head else f"a body starting {head[:8]!r}"
            raise NotAudio(
                "unsupported_format",
                f"{what} is not a recording in an accepted format "
                f"({', '.join(self.settings.formats)}); the format is read from the bytes",
                bytes=len(head))
        return fmt

    def _planned_key(self, intake: Intake, record: Recording, fmt: Format) -> str:
        """Where the recording is meant to be stored (``storage.key_template``)."""
        return render_key(
            self.key_template,
            {"account_id": record.account_id, "owner_id": intake.owner_id,
             "call_id": record.call_id, "recording_id": record.recording_id or record.id,
             "id": record.id, "source": record.source, "ext": fmt.value},
            record.started_at or record.received_at)

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
        O_DIRECT), of :meth:`block_size` bytes, filled in place. A body with a
        :class:`BlockReader` (a raw upload's socket) is read by a worker thread: for a
        staging that takes writes from a thread (disk), that thread reads, hashes and
        writes the whole body, and the event loop does nothing per block; otherwise it
        fills and hashes each block, and the loop hands it to storage. Other bodies are
        read on the loop, each block then hashed with its write: one thread hop per block,
        no copy made per block."""
        intake, blocks, staging, held = attempt.intake, attempt.blocks, attempt.staging, \
            attempt.held
        assert staging is not None
        cap = PROBE_MAX_BYTES if attempt.fmt is Format.PROBE else self.settings.max_bytes
        sha256 = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False) if intake.content_md5 is not None else None
        digest = partial(_update, sha256, md5)
        received = self.metrics.bytes_received.labels(intake.source)
        edges = not self.storage.local_files
        reader = blocks.reader
        size = self.block_size()
        buffer = mmap.mmap(-1, size)
        self._block_bytes += size
        self._streaming += 1
        try:
            with memoryview(buffer) as view:
                view[:len(head)] = head
                if reader is not None and isinstance(staging, ThreadWritable) and not edges:
                    await self._in_thread(reader, self._pump, attempt, view, len(head), cap,
                                          digest, staging, received)
                    filled = 0
                elif reader is not None:
                    filled = len(head) + await self._in_thread(
                        reader, _fill_hashed, blocks, view, len(head), digest)
                else:
                    filled = len(head) + await blocks.fill(view[len(head):])
                if edges:
                    attempt.head = bytes(view[:min(filled, EDGE_BYTES)])
                while filled:
                    _check(blocks.total, cap, held)
                    block = view[:filled]
                    await staging.write(block, None if reader is not None else digest)
                    received.inc(filled)
                    held.moved = True
                    if edges:
                        attempt.tail = (bytes(block[-EDGE_BYTES:]) if filled >= EDGE_BYTES
                                        else (attempt.tail + bytes(block))[-EDGE_BYTES:])
                    block.release()
                    if filled < size:
                        filled = 0
                    elif reader is not None:
                        filled = await self._in_thread(reader, _fill_hashed, blocks, view, 0,
                                                       digest)
                    else:
                        filled = await blocks.fill(view)
        finally:
            self._block_bytes -= size  # the buffer is unmapped once its last view is gone
            self._streaming -= 1
        if intake.content_length is not None and blocks.total != intake.content_length:
            raise Malformed(
                "length_mismatch",
                f"received {blocks.total} bytes, Content-Length said {intake.content_length}")
        if md5 is not None and md5.digest() != intake.content_md5:
            raise Malformed(
                "content_md5_mismatch", "the body's MD5 differs from the Content-MD5 header")
        attempt.sha256 = sha256.hexdigest()

    @staticmethod
    def _pump(attempt: _Attempt, view: memoryview, start: int, cap: int,
              digest: Callable[[memoryview], None], staging: ThreadWritable,
              received: Any) -> None:
        """Blocking, on a body thread: the whole rest of the body, block by block, from
        ``attempt.blocks``' reader into ``staging``, hashed on the way; ``view[:start]``
        holds the body's first bytes already."""
        blocks, held, size = attempt.blocks, attempt.held, len(view)
        filled = start + blocks.fill_blocking(view[start:])
        while filled:
            _check(blocks.total, cap, held)
            with view[:filled] as block:
                digest(block)
                staging.write_blocking(block)
            received.inc(filled)
            held.moved = True
            filled = blocks.fill_blocking(view) if filled == size else 0

    async def _in_thread(self, reader: BlockReader, work: Callable[..., _T],
                         *args: Any) -> _T:
        """``work(*args)`` on a body thread. When the caller is cancelled (the drain ran
        out), ``reader`` is interrupted and the thread waited for, so that nothing writes
        to the staging object once its clean-up begins."""
        future = asyncio.get_running_loop().run_in_executor(
            self.threads, partial(work, *args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            reader.interrupt()
            await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # it failed because it was interrupted: retrieved
            raise

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

    async def _fail(self, attempt: _Attempt, exc: BaseException) -> None:
        """Drop the attempt and give its lease up: the record ``failed`` with the error
        code the client was answered, or, when something may be left in storage (a commit
        whose outcome is unknown, a multipart upload S3 would not abort), its lease left to
        expire now, so that the next taker or the sweeper settles it. A lease the caller
        holds (a pull) stays the caller's. Never raises."""
        held = attempt.held
        if attempt.staging is not None and not held.leftover:
            held.leftover = not await attempt.staging.abort()
        reason = exc.code if isinstance(exc, RecsinkError) else type(exc).__name__
        if attempt.intake.held is not None:  # the caller's lease: it decides what follows
            if not held.leftover:
                try:
                    held.record = await self.catalog.update(
                        held.id, held.lease, storage_key=None, upload_key=None, upload_id=None)
                except RecsinkError as db_exc:
                    held.leftover = True
                    self._log.error("catalog.error", id=held.id, error=db_exc.reason())
            return
        if held.leftover:
            await self.commits.leave(held, error=reason)
            return
        try:
            await self.commits.release(held, status=Status.FAILED, error=reason,
                                       storage_key=None, upload_key=None, upload_id=None)
        except RecsinkError as db_exc:  # the client's error is what it needs to see
            self._log.error("catalog.error", id=held.id, error=db_exc.reason())
            self.commits.drop(held)  # its lease expires; the sweeper settles it


def _check(total: int, cap: int, held: Held) -> None:
    """Raise when the body is over ``cap`` bytes, or the lease was taken over (nobody will
    commit what this upload receives)."""
    if total > cap:
        raise TooLarge("too_large", f"body is over the {cap}-byte limit")
    if held.lost:
        raise LeaseLost(held.id)


def _fill_hashed(blocks: _Blocks, view: memoryview, start: int,
                 digest: Callable[[memoryview], None]) -> int:
    """Blocking, on a body thread: fill ``view[start:]`` from the body's reader, then hash
    the block ``view[:start + filled]``; returns the bytes filled."""
    filled = blocks.fill_blocking(view[start:])
    if start + filled:
        with view[:start + filled] as block:
            digest(block)
    return filled


def _update(sha256: Any, md5: Any, block: memoryview) -> None:
    sha256.update(block)
    if md5 is not None:
        md5.update(block)


def decode_content_md5(value: str | None) -> bytes | None:
    """The 16-byte digest of a ``Content-MD5`` header (base64, RFC 1864). Raises
    :class:`Malformed`."""
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        digest = b""
    if len(digest) != 16:
        raise Malformed("bad_content_md5", "Content-MD5 must be a base64 MD5 digest")
    return digest
