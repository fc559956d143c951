"""Disk storage: staging file, fsync, atomic no-overwrite commit.

Layout under ``root``::

    root/.staging/<random>.part      bytes being received (same filesystem as the objects)
    root/<key>                       committed recordings, e.g. <account>/2024/03/12/<id>.mp3

A commit is ``link(staging, final)`` then ``unlink(staging)``: the final name appears at once
with complete content, and ``link`` fails with EEXIST instead of replacing an existing file
(DESIGN.md invariants 2 and 3; :class:`~recsink.storage.KeyTaken`). With ``fsync`` on, the
staging file is fsynced before the commit and every directory whose entries changed is
fsynced after it, so a 2xx is only sent for bytes that survive a power cut (invariant 1). A
directory fsync that fails after the link leaves the file's durability unknown:
:class:`~recsink.storage.CommitUncertain`, and :meth:`DiskStorage.find` (which fsyncs what
it finds) settles it later.

A disk root belongs to one recsink instance: its staging directory is swept at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

from recsink.storage import (
    Buffer,
    CommitUncertain,
    Digest,
    Found,
    KeyTaken,
    MultipartUpload,
    OnUpload,
    StorageError,
    StorageFull,
    StorageUnavailable,
    Stored,
)

STAGING_DIR = ".staging"


def _storage_error(exc: OSError, what: str) -> StorageError:
    detail = f"{what}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(detail)
    return StorageUnavailable(detail)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: O_DIRECT writes move whole multiples of this many bytes from buffers aligned to it (a
#: page; enough for any logical block size Linux file systems use).
DIRECT_ALIGN = 4096
#: Buffered writes go to the page cache this many bytes per call (all in the same worker
#: thread): on the benchmark machine 1 MiB write() calls took from 0.3 to 2.9 CPU seconds
#: per 2000 MiB from run to run, 256 KiB calls 0.38-0.42 (bench/RESULTS.md).
BUFFERED_WRITE = 256 * 1024


class DiskStaging:
    """One recording being written to ``root/.staging``; see :class:`recsink.storage.Staging`.

    With ``storage.disk.fsync`` on, the staging file is opened with ``O_DIRECT`` where the
    file system allows it: blocks go from ingest's page-aligned buffer to the device without
    a copy into the page cache (the bytes must reach the device before the answer anyway),
    and the final fsync has only metadata and the device cache left to flush. A write that
    O_DIRECT cannot take (an unaligned tail, an unaligned buffer: ``EINVAL``) switches the
    file to ordinary buffered writes for the rest.
    """

    def __init__(self, storage: DiskStorage, key: str, path: Path, fd: int, direct: bool) -> None:
        self.key = key
        self._storage = storage
        self._path = path
        self._fd: int | None = fd
        self._direct = direct
        self._committed = False

    async def write(self, block: Buffer, digest: Digest | None = None) -> None:
        assert self._fd is not None, "write after finish"
        try:
            await asyncio.to_thread(self._write, self._fd, block, digest)
        except OSError as exc:
            raise _storage_error(exc, "writing the staging file") from exc

    def write_blocking(self, block: Buffer) -> None:
        assert self._fd is not None, "write after finish"
        try:
            self._write(self._fd, block, None)
        except OSError as exc:
            raise _storage_error(exc, "writing the staging file") from exc

    def _write(self, fd: int, block: Buffer, digest: Digest | None) -> None:
        """Blocking: ``digest(block)``, then every byte of ``block`` to the file."""
        if digest is not None:
            digest(block)
        with memoryview(block) as view:
            while view:
                whole = len(view) - len(view) % DIRECT_ALIGN if self._direct else 0
                if whole:
                    try:
                        done = os.write(fd, view[:whole])
                    except OSError as exc:
                        if exc.errno != errno.EINVAL:
                            raise
                        self._stop_direct(fd)
                        continue
                else:
                    if self._direct:  # a tail shorter than one aligned block
                        self._stop_direct(fd)
                    done = os.write(fd, view[:BUFFERED_WRITE])
                view = view[done:]

    def _stop_direct(self, fd: int) -> None:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self._direct = False

    async def finish(self) -> Path:
        assert self._fd is not None, "finish twice"
        fd, self._fd = self._fd, None
        try:
            if self._storage.fsync:
                await asyncio.to_thread(os.fsync, fd)
        except OSError as exc:
            raise _storage_error(exc, "flushing the staging file") from exc
        finally:
            os.close(fd)
        return self._path

    async def commit(self, key: str, meta: Mapping[str, Any] | None = None) -> Stored:
        """Link the staged file into place at ``key``; ``meta`` is not kept (the catalog
        has it)."""
        assert self._fd is None, "commit before finish"
        try:
            await asyncio.to_thread(self._storage.place, self._path, key)
        except FileExistsError:
            raise KeyTaken(key) from None
        except _Unsynced as unsynced:
            self._committed = True  # the name is in place: not ours to unlink any more
            raise CommitUncertain(
                f"committed {key}, but its directory could not be flushed: "
                f"{unsynced.error.strerror or unsynced.error}") from unsynced.error
        except OSError as exc:
            raise _storage_error(exc, "committing") from exc
        self._committed = True
        return Stored(key, self._storage.url(key))

    async def abort(self) -> bool:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
        if not self._committed:
            try:
                await aiofiles.os.unlink(self._path)
            except FileNotFoundError:
                pass
            except OSError:
                # Nothing under a key refers to it; removed by the next staging file
                # opened (a read-only file system may be writable again by then), or by
                # the start-up sweep.
                self._storage.leftovers.add(self._path)
        return True


class _Unsynced(Exception):
    """The final name is linked, but fsyncing a directory failed afterwards."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class DiskStorage:
    """Recordings as files under ``root``; see :class:`recsink.storage.Storage`."""

    local_files = True

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root.absolute()
        self._real_root = str(self.root.resolve())  # again once the root exists (start)
        self.staging_dir = self.root / STAGING_DIR
        self.fsync = fsync
        self._direct = fsync  # until the file system refuses O_DIRECT
        #: Staging files an abort could not remove (file system read-only at the time).
        self.leftovers: set[Path] = set()

    async def start(self) -> int:
        try:
            return await asyncio.to_thread(self._prepare)
        except OSError as exc:
            raise _storage_error(exc, f"preparing {self.root}") from exc

    def _prepare(self) -> int:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self._real_root = str(self.root.resolve())
        swept = 0
        for leftover in self.staging_dir.iterdir():
            leftover.unlink(missing_ok=True)
            swept += 1
        if swept and self.fsync:
            _fsync_dir(self.staging_dir)
        return swept

    async def open_staging(
        self, key: str, meta: Mapping[str, Any] | None = None,
        on_upload: OnUpload | None = None,
    ) -> DiskStaging:
        """See :class:`recsink.storage.Storage`; a file opens nothing outside the root, so
        ``on_upload`` is never called."""
        self.path(key)  # refuse a key outside the root before any byte is written
        path = self.staging_dir / f"{secrets.token_hex(16)}.part"
        try:
            fd, direct = await asyncio.to_thread(self._create, path)
        except OSError as exc:
            raise _storage_error(exc, "creating a staging file") from exc
        return DiskStaging(self, key, path, fd, direct)

    def _create(self, path: Path) -> tuple[int, bool]:
        """Blocking: create the staging file; its fd, and whether it is open with O_DIRECT
        (with fsync on, where the file system supports it: not tmpfs, for one)."""
        for leftover in list(self.leftovers):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
                self.leftovers.discard(leftover)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        if self._direct:
            try:
                return os.open(path, flags | os.O_DIRECT, 0o666), True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct = False
        return os.open(path, flags, 0o666), False

    def path(self, key: str) -> Path:
        """The file for ``key``; raises ValueError for a key that would leave the root
        (``..``, an absolute key). The check is on the path's text (the root's symlinks
        resolved once, at start): keys are recsink's own, and a symlink inside the root
        is the operator's doing (resolving every key cost a stat per path component)."""
        path = os.path.normpath(os.path.join(self._real_root, key))
        if not path.startswith(os.path.join(self._real_root, "")) or path == self._real_root:
            raise ValueError(f"key {key!r} is outside the storage root")
        return Path(path)

    def place(self, staged: Path, key: str) -> None:
        """Blocking: hard-link ``staged`` at ``key``, drop the staging name, fsync what
        changed. Raises FileExistsError when ``key`` is taken, :class:`_Unsynced` when the
        link is made but a directory could not be fsynced, OSError."""
        final = self.path(key)
        new_dirs = self._makedirs(final.parent)
        os.link(staged, final)
        os.unlink(staged)
        if self.fsync:
            # The staging name's removal need not be durable: a leftover is swept at start-up.
            try:
                for directory in (final.parent, *new_dirs):
                    _fsync_dir(directory)
            except OSError as exc:
                raise _Unsynced(exc) from exc

    def _makedirs(self, directory: Path) -> list[Path]:
        """Create ``directory`` and missing parents; return the parents whose entries
        changed (to fsync), deepest first."""
        missing = []
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        changed = []
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            changed.append(d.parent)
        return changed[::-1]

    def url(self, key: str) -> str:
        return self.path(key).as_uri()

    def local_root(self) -> Path:
        return self.root

    async def read(self, key: str, chunk_size: int, start: int = 0,
                   length: int | None = None) -> AsyncGenerator[bytes, None]:
        try:
            async with aiofiles.open(self.path(key), "rb") as fh:
                if start:
                    await fh.seek(start)
                left = length
                while left is None or left > 0:
                    want = chunk_size if left is None else min(chunk_size, left)
                    if not (block := await fh.read(want)):
                        break
                    if left is not None:
                        left -= len(block)
                    yield block
        except OSError as exc:
            raise _storage_error(exc, f"reading {key}") from exc

    async def delete(self, key: str) -> bool:
        try:
            path = self.path(key)
        except ValueError:
            return False
        try:
            return await asyncio.to_thread(self._unlink, path)
        except OSError as exc:
            raise _storage_error(exc, f"deleting {key}") from exc

    def _unlink(self, path: Path) -> bool:
        """Blocking: unlink ``path`` and fsync its directory; False when it was not
        there."""
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        if self.fsync:
            _fsync_dir(path.parent)
        return True

    async def find(self, key: str) -> Found | None:
        """The file at ``key`` with its size and sha256; with ``fsync`` on, the file and
        its directory are fsynced first (a commit whose directory fsync failed becomes
        durable here, or this raises)."""
        try:
            size, sha256 = await asyncio.to_thread(self._find, self.path(key))
            return Found(Stored(key, self.url(key)), size, sha256)
        except (FileNotFoundError, ValueError):
            return None
        except OSError as exc:
            raise _storage_error(exc, f"reading {key}") from exc

    def _find(self, path: Path) -> tuple[int, str]:
        if self.fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(path.parent)
        return _size_and_sha256(path)

    async def discard(self, upload: MultipartUpload) -> None:
        """A disk root opens no multipart uploads."""

    async def check_writable(self) -> None:
        try:
            await asyncio.to_thread(self._probe_write)
        except OSError as exc:
            raise _storage_error(exc, f"writing to {self.staging_dir}") from exc

    def _probe_write(self) -> None:
        probe = self.staging_dir / f"ready-{secrets.token_hex(4)}.part"
        try:
            probe.write_bytes(b"ok")
        finally:
            probe.unlink(missing_ok=True)


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
