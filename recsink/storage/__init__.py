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

Keys are relative, ``/``-separated, already sanitized names (:mod:`recsink.storage.keys`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol


class StorageError(Exception):
    """The backend could not store or read; ``full`` when it is out of space."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


class Staging(Protocol):
    """One recording on its way into storage."""

    #: The key the object is meant to have.
    key: str

    async def write(self, block: bytes) -> None:
        """Append ``block``. Raises :class:`StorageError`."""

    async def finish(self) -> Path | None:
        """Make the staged bytes durable. Returns a local file holding them (for reading
        audio headers) or None. Raises :class:`StorageError`."""

    async def commit(self) -> str:
        """Make the object visible at :attr:`key` or, if that is taken, at the next free
        variant of it; return the key used. Raises :class:`StorageError`."""

    async def abort(self) -> None:
        """Discard the staged bytes. Never raises; safe to call more than once and after
        a failed :meth:`commit`."""


class Storage(Protocol):
    """A place recordings are kept."""

    async def start(self) -> int:
        """Prepare for use and sweep staging leftovers of earlier runs; return how many were
        removed. Raises :class:`StorageError`."""

    async def open_staging(self, key: str) -> Staging:
        """Begin a new staged object meant for ``key``. Raises :class:`StorageError`."""

    def url(self, key: str) -> str:
        """Where the object at ``key`` lives, as a URL (``file:///…``, ``s3://…``)."""

    def local_path(self, key: str) -> Path | None:
        """The object's file on this machine, when the backend has one (for sendfile)."""

    def read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        """Stream the object's bytes. Raises :class:`StorageError`."""

    async def delete(self, key: str) -> None:
        """Remove the object at ``key`` (a commit that could not be recorded). Never raises;
        a missing object is fine."""

    async def verify(self, key: str) -> tuple[int, str] | None:
        """``(byte_size, sha256 hex)`` of the object at ``key``, or None if it is missing."""

    async def check_writable(self) -> None:
        """Raise :class:`StorageError` unless a recording could be stored now."""
