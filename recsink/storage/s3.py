"""S3 storage: streamed multipart uploads in bounded memory, a local spool when S3 is down.

A recording goes up as it arrives: parts of ``part_size`` bytes are cut from the request
stream and uploaded while the next part is read, at most ``parts_in_flight`` at a time per
upload. Part buffers come from one :class:`PartPool` shared by every upload, so recsink's S3
buffer memory never exceeds ``max_buffer_bytes`` whatever the number or size of uploads; an
upload that finds no free buffer stops reading its client until one frees up. A body smaller
than one part goes up with a single PutObject.

Nothing half-written is ever visible (DESIGN.md invariant 2): a multipart upload is invisible
until CompleteMultipartUpload, which happens only after the part count and total size are
checked, and every failure aborts it (shielded from cancellation; a failed abort is logged,
counted, and retried at the next start from the multipart journal). Objects are written with
``If-None-Match: *``, so an existing object is never overwritten (invariant 3).

Bytes are protected on the way by the transport, not by a digest of recsink's: over HTTPS by
TLS, over plain HTTP by SigV4's signed payload (S3 checks each request's
``x-amz-content-sha256``). Comparing each part's ETag with an MD5 of it cost a quarter of
recsink's CPU on the S3 path (bench/RESULTS.md) and guarded only against corruption in
transit that a signature-checking server or TLS already refuses.

When S3 cannot be reached before any part of an upload was sent, the upload goes to the local
spool instead (a :class:`~recsink.storage.disk.DiskStorage`: fsynced, atomic, same
invariants) and is acknowledged; :mod:`recsink.shipper` moves it to S3 later. A failure after
parts were sent answers 503 with Retry-After. Wire details: specs/s3.md §5 (aiobotocore).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsink import logs
from recsink.config import S3Settings
from recsink.metrics import Metrics
from recsink.storage import (
    AlreadyStored,
    Buffer,
    Claim,
    Digest,
    Existing,
    Found,
    NoClaim,
    StorageError,
    Stored,
)
from recsink.storage.claims import Claims
from recsink.storage.disk import DiskStaging, DiskStorage
from recsink.storage.keys import variant
from recsink.storage.s3client import (
    INTERNAL_PREFIX,
    S3_ERRORS,
    Destination,
    Unreachable,
    as_storage_error,
    content_type,
    decode_metadata,
    encode_metadata,
    is_conflict,
    is_missing,
    is_unreachable,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

#: S3 copies objects up to 5 GiB in one request (CopyObject), which sets final metadata.
MAX_COPY_BYTES = 5 * 1024**3


def _cut(buffer: io.BytesIO, size: int) -> None:
    """Make ``buffer`` a part body of ``size`` bytes, read from its start."""
    if buffer.getbuffer().nbytes != size:
        buffer.truncate(size)
    buffer.seek(0)


class PartPool:
    """Part buffers shared by every upload: at most ``count`` buffers of ``size`` bytes
    exist, and :meth:`acquire` waits for a free one.

    A buffer is an ``io.BytesIO`` pre-sized to ``size``, filled in place and handed to
    botocore as the part body itself: aiohttp then streams it in 64 KiB writes. (A
    ``bytes``/``bytearray`` body would be copied up to three times on the way out, by
    aiohttp's payload slicing, its header join and the transport's send buffer: measured
    as 28-47 MiB more at four concurrent 300 MiB uploads, bench/S3_RSS.md.)
    """

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self.count = count
        self._free: list[io.BytesIO] = []
        self._available = asyncio.Semaphore(count)

    async def acquire(self) -> io.BytesIO:
        await self._available.acquire()
        if self._free:
            return self._free.pop()
        buffer = io.BytesIO()
        buffer.write(bytes(self.size))
        return buffer

    def release(self, buffer: io.BytesIO) -> None:
        """Give a buffer back; one cut short (a last part) is dropped, not reused."""
        if buffer.getbuffer().nbytes == self.size:
            self._free.append(buffer)
        self._available.release()


class MultipartJournal:
    """Multipart uploads this instance has open, one small file each, so that uploads
    interrupted by a crash (or whose abort failed) are aborted at the next start."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, upload_id: str) -> Path:
        return self.directory / hashlib.sha256(upload_id.encode()).hexdigest()

    def add(self, upload_id: str, object_key: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._path(upload_id).write_text(f"{upload_id}\n{object_key}\n", encoding="utf-8")

    def remove(self, upload_id: str) -> None:
        self._path(upload_id).unlink(missing_ok=True)

    def entries(self) -> list[tuple[str, str]]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            upload_id, _, object_key = path.read_text(encoding="utf-8").rstrip("\n").partition("\n")
            found.append((upload_id, object_key))
        return found


class S3Staging:
    """One recording streaming into S3; see :class:`recsink.storage.Staging`."""

    def __init__(
        self,
        storage: S3Storage,
        key: str,
        meta: Mapping[str, Any],
        spool: DiskStaging | None = None,
        *,
        spool_fallback: bool = True,
    ) -> None:
        self.key = key
        self._spool_fallback = spool_fallback
        self._storage = storage
        self._object_key = storage.destination.object_key(key)
        self._create_meta = encode_metadata(meta)
        self._record_id = meta.get("recsink-id")
        self._buffer: io.BytesIO | None = None
        self._fill = 0
        self._upload_id: str | None = None
        self._etags: dict[int, str] = {}
        self._sizes: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(storage.settings.parts_in_flight)
        self._failure: BaseException | None = None
        # The spool takes the recording when S3 is unreachable before any part was sent.
        self._spool = spool
        self._done = False

    # -- receiving -------------------------------------------------------------------------

    async def write(self, block: Buffer, digest: Digest | None = None) -> None:
        if self._spool is not None:
            await self._spool.write(block, digest)
            return
        if digest is not None:  # in a worker thread; the copy into part buffers is cheap
            await asyncio.to_thread(digest, block)
        self._raise_part_failure()
        pool = self._storage.pool
        view = memoryview(block)
        while view:
            if self._buffer is None:
                self._buffer = await pool.acquire()
                self._buffer.seek(0)
                self._fill = 0
            n = min(len(view), pool.size - self._fill)
            self._buffer.write(view[:n])
            self._fill += n
            view = view[n:]
            if self._fill == pool.size:
                await self._send_part()
                if self._spool is not None:  # S3 was unreachable: the rest goes to the spool
                    await self._spool.write(bytes(view))
                    return

    async def _send_part(self) -> None:
        assert self._buffer is not None
        if self._upload_id is None and not await self._create_upload():
            return
        await self._slots.acquire()
        buffer, size, self._buffer, self._fill = self._buffer, self._fill, None, 0
        self._sizes.append(size)
        task = asyncio.create_task(self._upload_part(len(self._sizes), buffer, size))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _create_upload(self) -> bool:
        """Open the multipart upload; False when S3 is unreachable and the bytes so far went
        to the spool instead."""
        storage = self._storage
        try:
            response = await storage.client.create_multipart_upload(
                Bucket=storage.destination.bucket, Key=self._object_key,
                Metadata=self._create_meta, ContentType=content_type(self.key),
                **storage.write_options())
        except S3_ERRORS as exc:
            if not (is_unreachable(exc) and self._spool_fallback):
                raise as_storage_error(exc, "CreateMultipartUpload") from exc
            storage.mark_unreachable(exc)
            await self._divert_to_spool()
            return False
        self._upload_id = response["UploadId"]
        storage.open_uploads.add(self._upload_id)
        await asyncio.to_thread(storage.journal.add, self._upload_id, self._object_key)
        return True

    async def _divert_to_spool(self) -> None:
        self._spool = await self._storage.spool.open_staging(self.key)
        if self._buffer is not None:
            await self._spool.write(self._buffer.getvalue()[:self._fill])
            self._release_buffer()

    async def _upload_part(self, number: int, buffer: io.BytesIO, size: int) -> None:
        storage = self._storage
        try:
            _cut(buffer, size)
            response = await storage.client.upload_part(
                Bucket=storage.destination.bucket, Key=self._object_key,
                UploadId=self._upload_id or "", PartNumber=number, Body=buffer)
            self._etags[number] = response["ETag"]
        except BaseException as exc:
            self._failure = self._failure or exc
            if not isinstance(exc, asyncio.CancelledError) and is_unreachable(exc):
                storage.mark_unreachable(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            storage.pool.release(buffer)
            self._slots.release()

    def _raise_part_failure(self) -> None:
        if self._failure is not None:
            raise as_storage_error(self._failure, "UploadPart") from self._failure

    async def finish(self) -> Path | None:
        if self._spool is not None:
            return await self._spool.finish()
        if self._upload_id is not None:
            if self._fill:
                await self._send_part()
            if self._tasks:
                await asyncio.wait(list(self._tasks))
            self._raise_part_failure()
            # A gap in part numbers or a short total would complete a corrupt object
            # (tusd #497, #1247): check both before CompleteMultipartUpload.
            if sorted(self._etags) != list(range(1, len(self._sizes) + 1)):
                raise StorageError("S3 multipart: a part is missing")
        return None

    # -- committing ------------------------------------------------------------------------

    async def commit(self, meta: Mapping[str, Any]) -> Stored:
        storage = self._storage
        if self._spool is not None:
            return await self._commit_spool(await self._spool.commit(meta))
        full_meta = {**self._create_meta, **encode_metadata(meta)}
        size = sum(self._sizes) if self._upload_id else self._fill
        try:
            if self._upload_id is None:
                body = self._buffer if self._buffer is not None else io.BytesIO()
                _cut(body, self._fill)
                await storage.client.put_object(
                    Bucket=storage.destination.bucket, Key=self._object_key, Body=body,
                    Metadata=full_meta, ContentType=content_type(self.key),
                    IfNoneMatch="*", **storage.write_options())
                self._release_buffer()
            else:
                try:
                    await storage.client.complete_multipart_upload(
                        Bucket=storage.destination.bucket, Key=self._object_key,
                        UploadId=self._upload_id, IfNoneMatch="*",
                        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": self._etags[n]}
                                                   for n in sorted(self._etags)]})
                except S3_ERRORS:
                    # Lost answers happen: botocore's retry of a complete S3 did carry out
                    # meets If-None-Match (412), a read timeout hides the 200.
                    if not await self._completed_anyway(size):
                        raise
                upload_id, self._upload_id = self._upload_id, None
                storage.open_uploads.discard(upload_id)
                await asyncio.to_thread(storage.journal.remove, upload_id)
                if size <= MAX_COPY_BYTES:
                    await storage.replace_metadata(self._object_key, full_meta)
        except S3_ERRORS as exc:
            if is_conflict(exc):
                existing = await storage.head(self.key)
                if existing is not None and existing.get("sha256") == full_meta.get("sha256"):
                    raise AlreadyStored(self.key) from exc
                raise StorageError(f"S3 object {self._object_key} exists with other content; "
                                   "the next attempt will take another name") from exc
            if (self._upload_id is None and is_unreachable(exc) and self._buffer is not None
                    and self._spool_fallback):
                # A small body is still in memory: keep it in the spool instead.
                storage.mark_unreachable(exc)
                await self._divert_to_spool()
                assert self._spool is not None
                await self._spool.finish()
                return await self._commit_spool(await self._spool.commit(meta))
            raise as_storage_error(exc, "commit") from exc
        self._done = True
        return Stored(self.key, storage.url(self.key))

    async def _completed_anyway(self, size: int) -> bool:
        """After CompleteMultipartUpload failed: whether S3 completed this very upload all
        the same (the object at the key carries its record id and size)."""
        try:
            found = await self._storage.head(self.key)
        except StorageError:
            return False
        return (found is not None and self._record_id is not None
                and found.get("recsink-id") == self._record_id
                and found.get("bytes") == str(size))

    async def _commit_spool(self, stored: Stored) -> Stored:
        self._done = True
        return Stored(stored.key, stored.url, pending=True)

    def _release_buffer(self) -> None:
        if self._buffer is not None:
            self._storage.pool.release(self._buffer)
            self._buffer, self._fill = None, 0

    async def abort(self) -> None:
        if self._spool is not None:
            await self._spool.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        self._release_buffer()
        if self._upload_id is not None and not self._done:
            upload_id, self._upload_id = self._upload_id, None
            self._storage.open_uploads.discard(upload_id)
            await asyncio.shield(self._storage.abort_upload(upload_id, self._object_key))


class S3Storage:
    """Recordings as objects under ``s3://bucket/prefix``; see
    :class:`recsink.storage.Storage`."""

    local_files = False

    def __init__(self, client: S3Client, settings: S3Settings, metrics: Metrics) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.destination = Destination.parse(settings.url)
        self.pool = PartPool(settings.part_size, settings.max_buffer_bytes // settings.part_size)
        self.spool = DiskStorage(settings.spool_dir / "recordings", fsync=True)
        self.journal = MultipartJournal(settings.spool_dir / "multipart")
        self.claims = Claims(self, instance_id())
        #: Multipart uploads open in this process, which the journal sweep must not touch.
        self.open_uploads: set[str] = set()
        self._unreachable_until = 0.0
        self._log = logs.get_logger()

    # -- state -----------------------------------------------------------------------------

    @property
    def reachable(self) -> bool:
        """False for ``unreachable_hold`` seconds after S3 failed to answer."""
        return time.monotonic() >= self._unreachable_until

    def mark_unreachable(self, exc: BaseException) -> None:
        if self.reachable:
            self._log.warning("s3.unreachable", error=str(exc) or type(exc).__name__,
                              hold_s=self.settings.unreachable_hold)
        self._unreachable_until = time.monotonic() + self.settings.unreachable_hold

    def mark_reachable(self) -> None:
        if not self.reachable:
            self._log.info("s3.reachable")
        self._unreachable_until = 0.0

    def write_options(self) -> dict[str, Any]:
        """Server-side encryption and storage class for new objects."""
        options: dict[str, Any] = {}
        if self.settings.server_side_encryption:
            options["ServerSideEncryption"] = self.settings.server_side_encryption
        if self.settings.sse_kms_key_id:
            options["SSEKMSKeyId"] = self.settings.sse_kms_key_id
        if self.settings.storage_class:
            options["StorageClass"] = self.settings.storage_class
        return options

    # -- the Storage protocol ----------------------------------------------------------------

    async def start(self) -> int:
        swept = await self.spool.start()
        await self.sweep_multipart()
        return swept

    async def sweep_multipart(self) -> int:
        """Abort the multipart uploads this instance left behind (a crash, a failed abort),
        never one it is still sending. Returns how many it tried."""
        entries = [(upload_id, key) for upload_id, key in
                   await asyncio.to_thread(self.journal.entries)
                   if upload_id not in self.open_uploads]
        for upload_id, object_key in entries:
            await self.abort_upload(upload_id, object_key)
        return len(entries)

    def leftovers(self) -> int:
        """Journal entries that are not uploads open in this process (blocking)."""
        return sum(upload_id not in self.open_uploads
                   for upload_id, _ in self.journal.entries())

    async def abort_upload(self, upload_id: str, object_key: str) -> None:
        """Abort a multipart upload; a failure is logged and counted, and the journal keeps
        it for the next sweep."""
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.destination.bucket, Key=object_key, UploadId=upload_id)
        except S3_ERRORS as exc:
            if not is_missing(exc):  # NoSuchUpload: already gone
                self.metrics.s3_abort_failures.inc()
                self._log.error("s3.abort_failed", key=object_key, error=str(exc))
                return
        await asyncio.to_thread(self.journal.remove, upload_id)

    async def claim(self, idempotency_key: str) -> Claim | Existing:
        """See :mod:`recsink.storage.claims`. While S3 is unreachable the recording goes to
        the spool unclaimed; the shipper claims it before shipping."""
        if not self.reachable:
            return NoClaim()
        try:
            return await self.claims.claim(idempotency_key)
        except Unreachable:
            return NoClaim()

    async def settle_recovered(self, idempotency_key: str, key: str) -> None:
        """See :meth:`recsink.storage.claims.Claims.settle_recovered`."""
        await self.claims.settle_recovered(idempotency_key, key)

    async def open_staging(self, key: str, meta: Mapping[str, Any]) -> S3Staging:
        """A staging object that streams to S3, or to the spool when S3 is unreachable."""
        if self.reachable:
            try:
                return S3Staging(self, await self.free_key(key), meta)
            except Unreachable:
                pass
        return S3Staging(self, key, meta, spool=await self.spool.open_staging(key, meta))

    async def open_direct(self, key: str, meta: Mapping[str, Any]) -> S3Staging:
        """A staging object that streams to S3 only (for shipping the spool)."""
        return S3Staging(self, await self.free_key(key), meta, spool_fallback=False)

    async def free_key(self, key: str) -> str:
        """``key``, or its first variant no object has yet (never overwrite)."""
        candidate, n = key, 1
        while await self.head(candidate) is not None:
            n += 1
            candidate = variant(key, n)
        return candidate

    async def head(self, key: str) -> dict[str, str] | None:
        """The object's metadata (decoded, plus ``bytes``), or None when there is none.
        Raises :class:`StorageError` (with the botocore error as cause)."""
        try:
            response = await self.client.head_object(
                Bucket=self.destination.bucket, Key=self.destination.object_key(key))
        except S3_ERRORS as exc:
            if is_missing(exc):
                return None
            if is_unreachable(exc):
                self.mark_unreachable(exc)
            raise as_storage_error(exc, "HeadObject") from exc
        self.mark_reachable()
        meta = decode_metadata(response.get("Metadata", {}))
        meta["bytes"] = str(response["ContentLength"])
        return meta

    async def replace_metadata(self, object_key: str, meta: Mapping[str, str]) -> None:
        """Give a completed multipart object its final metadata (sha256, duration), which
        CreateMultipartUpload could not carry: a server-side copy onto itself."""
        try:
            await self.client.copy_object(
                Bucket=self.destination.bucket, Key=object_key,
                CopySource={"Bucket": self.destination.bucket, "Key": object_key},
                MetadataDirective="REPLACE", Metadata=dict(meta),
                ContentType=content_type(object_key),
                **self.write_options())
        except S3_ERRORS as exc:
            # The recording is stored; only its sha256/duration metadata is missing.
            self._log.warning("s3.metadata_incomplete", key=object_key, error=str(exc))

    def url(self, key: str) -> str:
        return self.destination.url(key)

    def local_root(self) -> Path:
        return self.spool.root

    def local_path(self, key: str) -> Path | None:
        """The spooled copy, while a recording waits to be shipped."""
        path = self.spool.path(key)
        return path if path.is_file() else None

    async def read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        if self.local_path(key) is not None:  # spooled, not shipped yet
            async for block in self.spool.read(key, chunk_size):
                yield block
            return
        try:
            response = await self.client.get_object(
                Bucket=self.destination.bucket, Key=self.destination.object_key(key))
            async with response["Body"] as body:
                while block := await body.read(chunk_size):
                    yield block
        except S3_ERRORS as exc:
            raise as_storage_error(exc, "GetObject") from exc

    async def delete(self, key: str) -> None:
        with contextlib.suppress(*S3_ERRORS):
            await self.client.delete_object(
                Bucket=self.destination.bucket, Key=self.destination.object_key(key))
        await self.spool.delete(key)

    async def find(self, key: str) -> Found | None:
        if self.local_path(key) is not None:
            found = await self.spool.find(key)
            if found is not None:
                return Found(Stored(key, found.stored.url, pending=True), found.size,
                             found.sha256)
        meta = await self.head(key)
        if meta is None:
            return None
        return Found(Stored(key, self.url(key)), int(meta["bytes"]), meta.get("sha256", ""))

    async def check_writable(self) -> None:
        await self.spool.check_writable()
        try:
            await self.client.head_bucket(Bucket=self.destination.bucket)
        except S3_ERRORS as exc:
            raise as_storage_error(exc, f"bucket {self.destination.bucket}") from exc

    async def list_objects(self) -> AsyncIterator[str]:
        """Every recording's storage key under the prefix (recsink's own objects left out)."""
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = f"{self.destination.prefix}/" if self.destination.prefix else ""
        internal = prefix + INTERNAL_PREFIX + "/"
        async for page in paginator.paginate(Bucket=self.destination.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].startswith(internal):
                    yield self.destination.storage_key(item["Key"])


def instance_id() -> str:
    """This process, for claims: host, pid and a random tail."""
    return f"{os.uname().nodename}:{os.getpid()}:{os.urandom(3).hex()}"

