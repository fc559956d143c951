"""S3 storage: streamed multipart uploads in bounded memory, a local spool when S3 is down.

A recording goes up as it arrives: parts of ``part_size`` bytes are cut from the request
stream and uploaded while the next part is read, at most ``parts_in_flight`` at a time per
upload. Part buffers come from one :class:`PartPool` shared by every upload, so recsink's S3
buffer memory never exceeds ``max_buffer_bytes`` whatever the number or size of uploads; an
upload that finds no free buffer stops reading its client until one frees up. A body smaller
than one part, or of exactly one part, goes up with a single PutObject.

Nothing half-written is ever visible (DESIGN.md invariant 2): a multipart upload is invisible
until CompleteMultipartUpload, which happens only after the part count and total size are
checked, and every failure aborts it. Its upload id is handed to the caller
(``on_upload``, recorded in the catalog) before any part is sent, so an upload interrupted
by a crash is aborted by whichever instance settles its record
(:meth:`S3Storage.discard`). Objects are written with ``If-None-Match: *``, so an existing
object is never overwritten (invariant 3). Each object carries its record's metadata from
the start (``x-amz-meta-*``, with the record id); what is known only at the end (sha256,
duration) lives in the catalog, and no object is copied onto itself to add it.

A commit whose answer is lost (a read timeout, a retry meeting ``If-None-Match``) is
recognised by the object's ``recsink-id`` and size; one that cannot be checked (S3 gone)
raises :class:`~recsink.storage.CommitUncertain` for a multipart upload, and diverts a small
body to the spool, whose shipper checks before storing anything.

Bytes are protected on the way by the transport, not by a digest of recsink's: over HTTPS by
TLS, over plain HTTP by SigV4's signed payload (S3 checks each request's
``x-amz-content-sha256``). Comparing each part's ETag with an MD5 of it cost a quarter of
recsink's CPU on the S3 path (bench/RESULTS.md) and guarded only against corruption in
transit that a signature-checking server or TLS already refuses.

When S3 cannot be reached before any part of an upload was sent, the upload goes to the local
spool instead (a :class:`~recsink.storage.disk.DiskStorage`: fsynced, atomic, same
invariants) and is acknowledged; :mod:`recsink.shipper` moves it to S3 later
(:meth:`S3Storage.ship`). A failure after parts were sent answers 503 with Retry-After.
Wire details: specs/s3.md §5 (aiobotocore).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiofiles
from aiohttp import ClientPayloadError

from recsink import logs
from recsink.config import S3Settings
from recsink.metrics import Metrics
from recsink.storage import (
    Buffer,
    CommitUncertain,
    Digest,
    Found,
    KeyTaken,
    MultipartUpload,
    ObjectLocked,
    OnUpload,
    StorageError,
    StorageUnavailable,
    Stored,
)
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
    error_code,
    http_status,
    is_conflict,
    is_missing,
    is_unreachable,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

#: Seconds the start-up look for the bucket (HeadBucket) may take.
BUCKET_CHECK_TIMEOUT = 10.0

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
        # BytesIO takes over the zeroed bytes object without copying it: the pages are
        # touched only as the buffer fills.
        return io.BytesIO(bytes(self.size))

    def release(self, buffer: io.BytesIO) -> None:
        """Give a buffer back. One cut short (a last part) is kept too: it grows back as
        it fills, touching only the pages it needs (a fresh buffer per upload's last part
        cost 4 % of recsink's CPU on the S3 path)."""
        self._free.append(buffer)
        self._available.release()


class S3Staging:
    """One recording streaming into S3; see :class:`recsink.storage.Staging`."""

    def __init__(
        self,
        storage: S3Storage,
        key: str,
        meta: Mapping[str, Any],
        on_upload: OnUpload | None = None,
        spool: DiskStaging | None = None,
        *,
        spool_fallback: bool = True,
    ) -> None:
        self.key = key
        self._spool_fallback = spool_fallback
        self._storage = storage
        self._on_upload = on_upload
        self._create_meta = encode_metadata(meta)
        self._record_id = str(meta.get("recsink-id") or "")
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
            # A full buffer goes up once more bytes follow it: a body of exactly one part
            # is still one PutObject at the commit.
            if self._fill == pool.size:
                await self._send_part()
                if self._spool is not None:  # S3 was unreachable: the rest goes to the spool
                    await self._spool.write(bytes(view))
                    return
            if self._buffer is None:
                self._buffer = await pool.acquire()
                self._buffer.seek(0)
                self._fill = 0
            n = min(len(view), pool.size - self._fill)
            self._buffer.write(view[:n])
            self._fill += n
            view = view[n:]

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
        """Open the multipart upload, under the first free variant of the key (a multipart
        upload cannot change its key later), and report it; False when S3 is unreachable
        and the bytes so far went to the spool instead."""
        storage = self._storage
        try:
            self.key = await storage.free_key(self.key)
            response = await storage.client.create_multipart_upload(
                Bucket=storage.destination.bucket, Key=storage.destination.object_key(self.key),
                Metadata=self._create_meta, ContentType=content_type(self.key),
                **storage.write_options())
        except (*S3_ERRORS, Unreachable) as exc:
            if not ((isinstance(exc, Unreachable) or is_unreachable(exc))
                    and self._spool_fallback):
                if isinstance(exc, StorageError):
                    raise
                raise as_storage_error(exc, "CreateMultipartUpload") from exc
            if not isinstance(exc, Unreachable):
                storage.mark_unreachable(exc)
            await self._divert_to_spool()
            return False
        self._upload_id = response["UploadId"]
        if self._on_upload is not None:
            try:
                await self._on_upload(MultipartUpload(self.key, self._upload_id))
            except BaseException:
                await self.abort()  # not recorded: nobody else could ever abort it
                raise
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
                Bucket=storage.destination.bucket,
                Key=storage.destination.object_key(self.key),
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
                raise StorageUnavailable("S3 multipart: a part is missing")
        return None

    # -- committing ------------------------------------------------------------------------

    async def commit(self, key: str, meta: Mapping[str, Any]) -> Stored:
        if self._spool is not None:
            return await self._commit_spool(key, meta)
        if self._upload_id is None:
            return await self._put(key, meta)
        return await self._complete(key)

    async def _put(self, key: str, meta: Mapping[str, Any]) -> Stored:
        """A body smaller than one part: one PutObject, with all its metadata."""
        storage = self._storage
        body = self._buffer if self._buffer is not None else io.BytesIO()
        size = self._fill
        try:
            _cut(body, size)
            await storage.client.put_object(
                Bucket=storage.destination.bucket, Key=storage.destination.object_key(key),
                Body=body, Metadata={**self._create_meta, **encode_metadata(meta)},
                ContentType=content_type(key), IfNoneMatch="*", **storage.write_options())
        except S3_ERRORS as exc:
            # Lost answers happen: botocore's retry of a put S3 did carry out meets
            # If-None-Match (412), a read timeout hides the 200. Unless S3 is gone (then the
            # spool's shipper asks, below), ask S3 whether it stored this very object.
            landed = None if is_unreachable(exc) else await self._landed(key, size)
            if landed:
                return self._stored(key)
            if is_conflict(exc):
                raise KeyTaken(key) from exc
            if self._spool_fallback and landed is None:
                # Keep the body in the spool: its shipper looks for this very object before
                # storing anything, so a put that landed after all is not stored twice.
                storage.mark_unreachable(exc)
                await self._divert_to_spool()
                assert self._spool is not None
                await self._spool.finish()
                return await self._commit_spool(key, meta)
            raise as_storage_error(exc, "PutObject") from exc
        return self._stored(key)

    async def _complete(self, key: str) -> Stored:
        storage = self._storage
        assert self._upload_id is not None
        if key != self.key:
            raise StorageUnavailable(f"S3 object {self.key} was taken meanwhile; the next "
                                     "attempt will take another name")
        size = sum(self._sizes)
        try:
            await storage.client.complete_multipart_upload(
                Bucket=storage.destination.bucket, Key=storage.destination.object_key(key),
                UploadId=self._upload_id, IfNoneMatch="*",
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": self._etags[n]}
                                           for n in sorted(self._etags)]})
        except S3_ERRORS as exc:
            landed = await self._landed(key, size)
            if landed is None:
                raise CommitUncertain(
                    f"S3 CompleteMultipartUpload of {key}: {exc}; whether it completed is "
                    "checked when the record is settled") from exc
            if not landed:
                if is_conflict(exc):
                    raise StorageUnavailable(
                        f"S3 object {key} exists with other content; the next attempt will "
                        "take another name") from exc
                raise as_storage_error(exc, "CompleteMultipartUpload") from exc
        return self._stored(key)

    def _stored(self, key: str) -> Stored:
        self._done = True
        self._upload_id = None
        self._release_buffer()
        return Stored(key, self._storage.url(key))

    async def _landed(self, key: str, size: int) -> bool | None:
        """After a commit failed: whether S3 stored this very upload all the same (the
        object at ``key`` carries its record id and size); None when S3 cannot tell."""
        try:
            found = await self._storage.head(key)
        except StorageError:
            return None
        return (found is not None and bool(self._record_id)
                and found.get("recsink-id") == self._record_id
                and found.get("bytes") == str(size))

    async def _commit_spool(self, key: str, meta: Mapping[str, Any]) -> Stored:
        assert self._spool is not None
        stored = await self._spool.commit(key, meta)
        self._done = True
        return Stored(stored.key, stored.url, pending=True)

    def _release_buffer(self) -> None:
        if self._buffer is not None:
            self._storage.pool.release(self._buffer)
            self._buffer, self._fill = None, 0

    async def abort(self) -> bool:
        if self._spool is not None:
            await self._spool.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        self._release_buffer()
        if self._upload_id is not None and not self._done:
            upload = MultipartUpload(self.key, self._upload_id)
            try:
                await self._storage.discard(upload)
            except StorageError:
                return False
            self._upload_id = None
        return True


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
        #: The name the catalog knows this instance's spool by.
        self.spool_id = settings.spool_id or (
            f"{os.uname().nodename}:{settings.spool_dir.absolute()}")
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

    # -- the Storage contract -----------------------------------------------------------------

    async def start(self) -> int:
        swept = await self.spool.start()
        await self._abort_journalled()
        await self._look_for_bucket()
        return swept

    async def _look_for_bucket(self) -> None:
        """Warn (``storage.bucket_missing``) when the bucket does not exist: recsink never
        creates it, and every recording would wait in the spool. Any other answer (S3
        unreachable, access denied, no answer within :data:`BUCKET_CHECK_TIMEOUT`) is only
        logged (``storage.bucket_unchecked``): serving starts either way."""
        bucket = self.destination.bucket
        try:
            async with asyncio.timeout(BUCKET_CHECK_TIMEOUT):
                await self.client.head_bucket(Bucket=bucket)
        except (*S3_ERRORS, TimeoutError) as exc:
            if is_missing(exc) or error_code(exc) == "NoSuchBucket":
                self._log.warning(
                    "storage.bucket_missing", bucket=bucket, endpoint=self.settings.endpoint_url
                    or None, detail=f"the bucket {bucket!r} does not exist: create it; until "
                    "then every recording waits in the spool")
            else:
                self._log.info("storage.bucket_unchecked", bucket=bucket,
                               error=str(exc) or type(exc).__name__)

    async def _abort_journalled(self) -> None:
        """recsink 0.1 listed its open multipart uploads in ``spool_dir/multipart``; abort
        what an upgraded instance left there, then drop the directory (the catalog keeps
        that list now)."""
        journal = self.settings.spool_dir / "multipart"
        if not journal.is_dir():
            return
        for entry in journal.iterdir():
            upload_id, _, object_key = entry.read_text(encoding="utf-8").strip().partition("\n")
            with contextlib.suppress(StorageError):
                await self.discard(MultipartUpload(
                    self.destination.storage_key(object_key), upload_id))
                entry.unlink()
        with contextlib.suppress(OSError):
            journal.rmdir()

    async def open_staging(self, key: str, meta: Mapping[str, Any],
                           on_upload: OnUpload | None = None) -> S3Staging:
        """A staging object that streams to S3, or to the spool while S3 is unreachable. No
        request is made yet: a body of at most one part goes up in one PutObject at the
        commit (which never overwrites: a taken key is :class:`KeyTaken`), a larger one
        looks for a free key when its multipart upload opens."""
        if self.reachable:
            return S3Staging(self, key, meta, on_upload)
        spool = await self.spool.open_staging(key, meta)
        return S3Staging(self, key, meta, on_upload, spool=spool)

    async def free_key(self, key: str) -> str:
        """``key``, or its first variant no object has yet (never overwrite)."""
        candidate, n = key, 1
        while await self.head(candidate) is not None:
            n += 1
            candidate = variant(key, n)
        return candidate

    async def find(self, key: str) -> Found | None:
        """The spooled copy while one waits here, else the object in S3 (its sha256 and
        record id as its metadata says)."""
        if self.spool.path(key).is_file():
            found = await self.spool.find(key)
            if found is not None:
                return Found(Stored(key, found.stored.url, pending=True), found.size,
                             found.sha256)
        meta = await self.head(key)
        if meta is None:
            return None
        return Found(Stored(key, self.url(key)), int(meta["bytes"]), meta.get("sha256", ""),
                     meta.get("recsink-id", ""))

    async def read(self, key: str, chunk_size: int, start: int = 0,
                   length: int | None = None) -> AsyncGenerator[bytes, None]:
        if self.spool.path(key).is_file():  # spooled, not shipped yet
            async for block in self.spool.read(key, chunk_size, start, length):
                yield block
            return
        if length == 0:  # an empty range: nothing to ask S3 for
            return
        ranged: dict[str, Any] = {}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            ranged["Range"] = f"bytes={start}-{end}"
        try:
            response = await self.client.get_object(
                Bucket=self.destination.bucket, Key=self.destination.object_key(key),
                **ranged)
            async with response["Body"] as body:
                while block := await body.read(chunk_size):
                    yield block
        except ClientPayloadError as exc:  # the object's body broke off (S3 went away)
            raise StorageUnavailable(f"S3 GetObject {key}: {exc}") from exc
        except S3_ERRORS as exc:
            if is_missing(exc):
                raise StorageUnavailable(
                    f"S3 has no object {key} (yet: it may wait in another instance's "
                    "spool)") from exc
            raise as_storage_error(exc, "GetObject") from exc

    async def delete(self, key: str) -> bool:
        """The spooled copy and the object. In a versioned bucket the version the object's
        HEAD names is deleted (a plain DeleteObject would only hide it behind a delete
        marker), which S3 Object Lock refuses (403 AccessDenied: :class:`ObjectLocked`);
        older versions of the key, if anything else wrote them, stay until the bucket's
        lifecycle removes them."""
        spooled = await self.spool.delete(key)
        bucket, object_key = self.destination.bucket, self.destination.object_key(key)
        try:
            head = await self.client.head_object(Bucket=bucket, Key=object_key)
        except S3_ERRORS as exc:
            if is_missing(exc):
                return spooled
            raise as_storage_error(exc, "HeadObject") from exc
        version = head.get("VersionId")
        options: dict[str, Any] = (
            {"VersionId": version} if version and version != "null" else {})
        try:
            await self.client.delete_object(Bucket=bucket, Key=object_key, **options)
        except S3_ERRORS as exc:
            if is_missing(exc):
                return spooled
            if error_code(exc) == "AccessDenied" or http_status(exc) == 403:
                raise ObjectLocked(f"S3 refuses to delete {key}: {exc} (Object Lock "
                                   "retention or legal hold, or no s3:DeleteObject"
                                   f"{'Version' if options else ''} permission)") from exc
            raise as_storage_error(exc, "DeleteObject") from exc
        return True

    async def discard(self, upload: MultipartUpload) -> None:
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.destination.bucket,
                Key=self.destination.object_key(upload.key), UploadId=upload.upload_id)
        except S3_ERRORS as exc:
            if is_missing(exc):  # NoSuchUpload: completed or aborted already
                return
            self.metrics.s3_abort_failures.inc()
            self._log.error("s3.abort_failed", key=upload.key, error=str(exc))
            raise as_storage_error(exc, "AbortMultipartUpload") from exc

    def url(self, key: str) -> str:
        return self.destination.url(key)

    def local_root(self) -> Path:
        return self.spool.root

    async def check_writable(self) -> None:
        await self.spool.check_writable()
        try:
            await self.client.head_bucket(Bucket=self.destination.bucket)
        except S3_ERRORS as exc:
            raise as_storage_error(exc, f"bucket {self.destination.bucket}") from exc

    # -- S3's own ------------------------------------------------------------------------------

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

    async def ship(self, key: str, meta: Mapping[str, Any],
                   on_upload: OnUpload | None = None) -> Stored:
        """Put the spooled copy at ``key`` into S3: at ``key``, or its first variant that is
        free, unless one of them already holds this very recording (``meta``'s record id
        and the copy's size: a put whose answer was lost), which is then the result.
        Raises :class:`StorageError`."""
        path = self.spool.path(key)
        size = path.stat().st_size
        record_id = str(meta.get("recsink-id") or "")
        n = 1
        while True:
            candidate = key if n == 1 else variant(key, n)
            there = await self.head(candidate)
            if there is not None:
                if there.get("recsink-id") == record_id and there.get("bytes") == str(size):
                    return Stored(candidate, self.url(candidate))
                n += 1
                continue
            staging = S3Staging(self, candidate, meta, on_upload, spool_fallback=False)
            try:
                async with aiofiles.open(path, "rb") as fh:
                    while block := await fh.read(self.settings.part_size):
                        await staging.write(block)
                await staging.finish()
                return await staging.commit(candidate, meta)
            except KeyTaken:
                await staging.abort()
                n += 1
            except BaseException:
                await staging.abort()
                raise

    async def list_objects(self) -> AsyncIterator[str]:
        """Every recording's storage key under the prefix (recsink's own objects left out)."""
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = f"{self.destination.prefix}/" if self.destination.prefix else ""
        internal = prefix + INTERNAL_PREFIX + "/"
        async for page in paginator.paginate(Bucket=self.destination.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].startswith(internal):
                    yield self.destination.storage_key(item["Key"])
