"""The storage contract every backend keeps (disk, S3): a handful of methods.

Ingest writes a recording through a :class:`Staging` object:

1. :meth:`Storage.open_staging` opens one for the key the object is meant to have (known
   before the first byte, as an S3 multipart upload needs it). When the backend opens
   something outside recsink's own disk that an interruption would leave behind (an S3
   multipart upload), it reports it through ``on_upload`` before any byte goes there, so
   the catalog knows it and any instance can :meth:`~Storage.discard` it later.
2. :meth:`Staging.write` takes the body in large blocks, in order. Nothing written to a
   staging object is visible under any key.
3. :meth:`Staging.finish` makes the staged bytes durable and says where a local copy can be
   read, if there is one.
4. :meth:`Staging.commit` makes the object visible under the key it is given, atomically,
   once, and **never overwrites**: a key taken by another object raises :class:`KeyTaken`
   (ingest names the next variant in the catalog and commits again). A commit whose outcome
   cannot be known (S3's answer lost, a directory fsync failed after the link) raises
   :class:`CommitUncertain`: the object may be there, and whoever settles the record finds
   out with :meth:`Storage.find`. :meth:`Staging.abort` throws the staged bytes away.

Reads go through :meth:`Storage.read`; :meth:`Storage.delete` removes an object for good
(retention, erasure: :mod:`recsink.retention`), or says the store refuses to
(:class:`ObjectLocked`). Everything
else a backend needs (the S3 spool and its shipping, multipart bookkeeping) lives inside it.
Keys are relative, ``/``-separated, already sanitized names (:mod:`recsink.storage.keys`).

Errors are domain errors: :class:`StorageUnavailable` (503) and :class:`StorageFull` (507).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from recsink.errors import Full, Locked, RecsinkError, Unavailable

#: Bytes to write: ``bytes``, or a ``memoryview`` of a buffer the writer reuses.
Buffer = bytes | memoryview
#: Work over a block done where it is written (hashing): see :meth:`Staging.write`.
Digest = Callable[[Buffer], None]


class StorageError(RecsinkError):
    """The backend could not store or read (the kind of every storage error)."""


class StorageUnavailable(StorageError, Unavailable):
    """Storage failed or cannot be reached; nothing was kept."""

    def __init__(self, detail: str) -> None:
        super().__init__("storage_unavailable", detail)


class StorageFull(StorageError, Full):
    """Storage is out of space; nothing was kept."""

    def __init__(self, detail: str) -> None:
        super().__init__("storage_full", detail)


class ObjectLocked(StorageError, Locked):
    """The store refuses to delete the object (S3 Object Lock: a retention period or a
    legal hold of the bucket's own); it is still there."""

    def __init__(self, detail: str) -> None:
        super().__init__("object_locked", detail)


class CommitUncertain(StorageUnavailable):
    """A commit failed in a way that leaves its outcome unknown: the object may be stored.
    Keep the record's intent; :meth:`Storage.find` tells later."""


class KeyTaken(Exception):
    """The commit found its key taken by another object; nothing was written there."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@dataclass(frozen=True)
class Stored:
    """Where a committed object is: its key, its URL, and ``pending`` when it sits in a
    local spool waiting to be shipped to its final storage."""

    key: str
    url: str
    pending: bool = False


@dataclass(frozen=True)
class Found:
    """An object found in storage: where it is, its size in bytes, its sha256 (hex; "" when
    the backend does not know it) and the record id it was created for ("" when unknown)."""

    stored: Stored
    size: int
    sha256: str = ""
    record_id: str = ""


@dataclass(frozen=True)
class MultipartUpload:
    """An S3 multipart upload an upload opened: the storage key it is for and its id."""

    key: str
    upload_id: str


#: Told of a multipart upload before any part is sent (ingest records it in the catalog).
OnUpload = Callable[[MultipartUpload], Awaitable[None]]


class Staging(Protocol):
    """One recording on its way into storage."""

    #: The key the object is meant to have (a free one when the staging opened).
    key: str

    async def write(self, block: Buffer, digest: Digest | None = None) -> None:
        """Append ``block`` (bytes, or a view the caller reuses once this returns).
        ``digest(block)``, when given, runs on the worker thread that writes the block, or
        beside the write: ingest hashes there, so a block costs one thread hop. Raises
        :class:`StorageError`."""

    async def finish(self) -> Path | None:
        """Make the staged bytes durable. Returns a local file holding them (for reading
        audio headers) or None. Raises :class:`StorageError`."""

    async def commit(self, key: str, meta: Mapping[str, Any]) -> Stored:
        """Make the object visible at ``key`` (normally :attr:`key`), with ``meta`` as its
        metadata where the backend keeps any. Raises :class:`KeyTaken`,
        :class:`CommitUncertain`, or :class:`StorageError` when nothing was committed."""

    async def abort(self) -> bool:
        """Discard the staged bytes; True when nothing is left behind, False when something
        outside recsink's disk could not be removed now (a multipart upload S3 did not
        abort: settle it later with :meth:`Storage.discard`). Never raises; safe to call
        more than once."""


@runtime_checkable
class ThreadWritable(Protocol):
    """A :class:`Staging` whose blocks can also be written from a worker thread (disk):
    ingest then reads, hashes and writes a body in one thread per upload."""

    def write_blocking(self, block: Buffer) -> None:
        """Blocking :meth:`Staging.write` (``block``: bytes, or a view the caller reuses
        once this returns), for a worker thread. Raises :class:`StorageError`."""


class Storage(Protocol):
    """A place recordings are kept."""

    #: True when :meth:`Staging.finish` always gives a local file to read audio facts
    #: from; otherwise ingest keeps the body's first and last bytes for that.
    local_files: bool

    async def start(self) -> int:
        """Prepare for use and sweep local staging leftovers of earlier runs; return how
        many were removed. Raises :class:`StorageError`."""

    async def open_staging(self, key: str, meta: Mapping[str, Any],
                           on_upload: OnUpload | None = None) -> Staging:
        """Begin a new staged object meant for ``key``, with the metadata known so far
        (``meta``, kept with the object where the backend can). Raises
        :class:`StorageError`."""

    async def find(self, key: str) -> Found | None:
        """The object at ``key``, made durable, or None when there is none. Raises
        :class:`StorageError` when storage cannot tell."""

    def read(self, key: str, chunk_size: int, start: int = 0,
             length: int | None = None) -> AsyncGenerator[bytes, None]:
        """Stream the object's bytes: ``length`` bytes (None: to the end) from offset
        ``start`` (S3: a ranged GetObject, RFC 9110 §14.1.2). Raises
        :class:`StorageError`."""

    async def delete(self, key: str) -> bool:
        """Remove the object at ``key`` for good (disk: the file, its directory fsynced;
        S3: the object, and in a versioned bucket the version recsink wrote). True when it
        was removed, False when there was none (already gone is success). Raises
        :class:`ObjectLocked` when the store refuses, :class:`StorageError` when it
        cannot be reached."""

    async def discard(self, upload: MultipartUpload) -> None:
        """Abort a multipart upload an interrupted upload left open (already gone is fine).
        Raises :class:`StorageUnavailable` when storage cannot be reached."""

    def url(self, key: str) -> str:
        """Where the object at ``key`` lives, as a URL (``file:///…``, ``s3://…``)."""

    def local_root(self) -> Path | None:
        """The local directory this backend writes to (for free-space monitoring)."""

    async def check_writable(self) -> None:
        """Raise :class:`StorageError` unless a recording could be stored now."""
