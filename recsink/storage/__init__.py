"""The storage interface every backend implements (disk now, S3 next).

Ingest writes a recording in three steps, and a backend guarantees what each means:

1. :meth:`Storage.open_staging` gives a :class:`Staging` for the key the object is meant to
   have (known before the first byte, as an S3 multipart upload needs it);
   :meth:`Staging.write` takes the body in large blocks, in order. Nothing written to a
   staging object is visible under any key.
2. :meth:`Staging.finish` makes the staged bytes durable (fsync) and says where a local copy
   can be read, if there is one.
3. :meth:`Staging.commit` makes the object visible under its key atomically and **never
   overwrites**: if the key is taken, the object gets the next free variant of it and the
   key actually used is returned. :meth:`Staging.abort` throws the staged bytes away.

Backends shared by several recsink instances (S3) also arbitrate who stores a recording:
:meth:`Storage.claim` before streaming (or before committing, when the idempotency key
depends on the content).

Keys are relative, ``/``-separated, already sanitized names (:mod:`recsink.storage.keys`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

#: Bytes to write: ``bytes``, or a ``memoryview`` of a buffer the writer reuses.
Buffer = bytes | memoryview
#: Work over a block done where it is written (hashing): see :meth:`Staging.write`.
Digest = Callable[[Buffer], None]


class StorageError(Exception):
    """The backend could not store or read; ``full`` when it is out of space."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


class ClaimBusy(StorageError):
    """Another instance is storing this recording right now; try again in
    ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AlreadyStored(Exception):
    """The commit found the same recording already stored at ``key``."""

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
    """An object found in storage: where it is, its size in bytes and its sha256 (hex;
    "" when the backend does not know it)."""

    stored: Stored
    size: int
    sha256: str


@dataclass(frozen=True)
class Existing:
    """A recording another instance already stored under an idempotency key: its key and
    object metadata (``x-amz-meta-*``, decoded, plus ``bytes``)."""

    key: str
    meta: dict[str, str]


class Claim(Protocol):
    """The right, across every instance sharing the storage, to store one recording."""

    async def settle(self, key: str) -> None:
        """The recording is stored at ``key``; later claimants will find it there."""

    async def release(self) -> None:
        """Give the claim up (the upload failed or was a duplicate). Never raises."""


class NoClaim:
    """The claim of a storage that no other instance shares (or that cannot be reached
    now, in which case dedupe happens when the spool is shipped)."""

    async def settle(self, key: str) -> None:
        return None

    async def release(self) -> None:
        return None


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

    async def commit(self, meta: Mapping[str, Any]) -> Stored:
        """Make the object visible at :attr:`key` or, if that is taken, at the next free
        variant of it, with ``meta`` as its metadata where the backend keeps any. Raises
        :class:`AlreadyStored` when the same content is already there,
        :class:`StorageError` otherwise."""

    async def abort(self) -> None:
        """Discard the staged bytes. Never raises; safe to call more than once and after
        a failed :meth:`commit`."""


class Storage(Protocol):
    """A place recordings are kept."""

    #: True when :meth:`Staging.finish` always gives a local file to read audio facts
    #: from; otherwise ingest keeps the body's first and last bytes for that.
    local_files: bool

    async def start(self) -> int:
        """Prepare for use and sweep staging leftovers of earlier runs; return how many were
        removed. Raises :class:`StorageError`."""

    async def open_staging(self, key: str, meta: Mapping[str, Any]) -> Staging:
        """Begin a new staged object meant for ``key``, with the metadata known so far.
        Raises :class:`StorageError`."""

    async def claim(self, idempotency_key: str) -> Claim | Existing:
        """Claim the recording with ``idempotency_key`` across instances: a :class:`Claim`
        to settle or release, or the :class:`Existing` object when another instance stored
        it already. Raises :class:`ClaimBusy` while another instance is storing it."""

    async def settle_recovered(self, idempotency_key: str, key: str) -> None:
        """Mark the claim of a recording that start-up recovery found committed at ``key``
        as settled, if the stopped process left it open. Raises :class:`StorageError`."""

    def url(self, key: str) -> str:
        """Where the object at ``key`` lives, as a URL (``file:///…``, ``s3://…``)."""

    def local_root(self) -> Path | None:
        """The local directory this backend writes to (for free-space monitoring)."""

    def read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        """Stream the object's bytes, from the local copy when there is one (the S3 spool,
        while a recording waits to be shipped). Raises :class:`StorageError`."""

    async def delete(self, key: str) -> None:
        """Remove the object at ``key`` (a commit that could not be recorded). Never raises;
        a missing object is fine."""

    async def find(self, key: str) -> Found | None:
        """The object at ``key`` (size and sha256), or None if it is missing."""

    async def check_writable(self) -> None:
        """Raise :class:`StorageError` unless a recording could be stored now."""
