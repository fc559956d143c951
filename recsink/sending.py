"""A stored object as the body of an HTTP answer: the Kazoo GET/HEAD probe
(:mod:`recsink.sources.kazoo`) and the console's audio (:mod:`recsink.ui.media`).

The object is opened, and up to one block of it read, before the status line goes out, so
that a storage failure, or a small object of the wrong size, is still a JSON answer (a
HEAD opens it too). Once the headers are out, nothing can be answered any more: a read
that fails, or an object shorter or longer than the catalog says, raises
:class:`~recsink.storage.StorageUnavailable`, and the error middleware closes the
connection instead of writing a second answer into the body (issue 11, item 1).
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from recsink.errors import RecsinkError
from recsink.storage import Storage, StorageUnavailable


async def send_object(request: web.Request, response: web.StreamResponse, storage: Storage,
                      key: str, size: int, block: int, start: int = 0,
                      length: int | None = None) -> None:
    """Send the object at ``key`` as ``response``'s body and end it: the whole object
    (``length`` None), which must hold ``size`` bytes, or ``length`` bytes from offset
    ``start`` (a byte range), read ``block`` bytes at a time. ``response`` is prepared here,
    after the object was opened. Raises :class:`~recsink.storage.StorageError` before the
    headers go out, :class:`~recsink.storage.StorageUnavailable` after."""
    expected = size if length is None else length
    async with contextlib.aclosing(storage.read(key, block, start, length)) as blocks:
        ahead: list[bytes] = []
        held = 0
        while held < min(expected + 1, block):
            if (chunk := await anext(blocks, None)) is None:
                if held != expected:
                    raise _size_mismatch(key, held, expected)
                break
            ahead.append(chunk)
            held += len(chunk)
        if held > expected:
            raise _size_mismatch(key, held, expected)
        await response.prepare(request)
        if request.method == "HEAD":
            return
        sent = 0
        try:
            for chunk in ahead:
                await response.write(chunk)
                sent += len(chunk)
            async for chunk in blocks:
                if sent + len(chunk) > expected:
                    raise _size_mismatch(key, sent + len(chunk), expected)
                await response.write(chunk)
                sent += len(chunk)
            if sent != expected:
                raise _size_mismatch(key, sent, expected)
        except RecsinkError as exc:
            raise StorageUnavailable(
                f"serving {key} broke off after {sent} of {expected} bytes ({exc.detail}); "
                "the connection is closed") from exc
    await response.write_eof()


def _size_mismatch(key: str, found: int, size: int) -> StorageUnavailable:
    return StorageUnavailable(
        f"the stored object {key} holds {'at least ' if found > size else ''}{found} bytes, "
        f"the catalog says {size}")
