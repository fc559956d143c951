"""Bodies as :class:`recsink.ingest.Body` streams: raw, one multipart part, or a download.

Both read aiohttp's stream directly (``request.content``; aiohttp #854: never
``request.read()`` or ``post()``, which buffer the whole body), give up after
``server.body_idle_timeout`` seconds without a byte (408), and turn a client that went away
into a 400 ``client_disconnected`` so ingest fails the upload and commits nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import Executor
from typing import Protocol, TypeVar

from aiohttp import BodyPartReader, ClientPayloadError, StreamReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiMapping

from recsink.connections import Connection, Registry
from recsink.errors import Malformed, Stalled, TooLarge, UnsupportedEncoding

_T = TypeVar("_T")

# A client that goes away mid-body surfaces as one of these from aiohttp's payload reader.
_BROKEN = (ConnectionError, web.RequestPayloadError, HttpProcessingError,
           asyncio.IncompleteReadError, ClientPayloadError)


async def guarded(read: Awaitable[_T], idle_timeout: float) -> _T:
    """``await read``, giving up after ``idle_timeout`` seconds (408 ``body_timeout``); a
    body that broke off is 400 ``client_disconnected``."""
    try:
        async with asyncio.timeout(idle_timeout):
            return await read
    except TimeoutError:
        raise Stalled(
            "body_timeout", f"no body bytes for {idle_timeout:g} seconds") from None
    except _BROKEN as exc:
        raise Malformed(
            "client_disconnected", f"the body broke off: {exc or type(exc).__name__}") from exc


async def read_capped(request: web.BaseRequest, limit: int, idle_timeout: float,
                      what: str) -> bytes:
    """The whole body of a small request (a signed callback), at most ``limit`` bytes.

    The cap holds for every framing: a Content-Length over ``limit`` is refused before a
    byte is read, and a chunked (or any other) body is read with a running count and refused
    as soon as byte ``limit + 1`` arrives, before the rest is read; recsink never holds more
    than ``limit + 1`` bytes of it. Raises 413 ``too_large`` ("``what`` is at most ``limit``
    bytes"), 408 ``body_timeout`` after ``idle_timeout`` seconds without a byte, 400
    ``client_disconnected`` for a body that broke off.
    """
    refused = TooLarge("too_large", f"{what} is at most {limit} bytes", limit=limit)
    if request.content_length is not None and request.content_length > limit:
        raise refused
    body = bytearray()
    while True:
        chunk = await guarded(request.content.read(limit + 1 - len(body)), idle_timeout)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise refused


def refuse_encoded(headers: MultiMapping[str]) -> None:
    """Raise 415 ``unsupported_encoding`` when a request's ``Content-Encoding`` (RFC 9110
    §8.4) names any coding but ``identity``. recsink never decodes a body (a gzip bomb
    would cost its decompressed size): call this before reading one. ``headers``: the
    request's headers (multidict; every ``Content-Encoding`` line counts)."""
    values: list[str] = headers.getall(hdrs.CONTENT_ENCODING, [])
    codings = [c.strip().lower() for v in values for c in v.split(",") if c.strip()]
    if any(c != "identity" for c in codings):
        shown = ", ".join(codings)[:100]
        raise UnsupportedEncoding(
            "unsupported_encoding",
            f"Content-Encoding {shown!r} is not accepted: send the body as it is "
            "(recsink never decompresses uploads)")


class Readable(Protocol):
    """A byte stream: aiohttp's ``StreamReader`` (a request, or a download's response) or
    aiobotocore's ``StreamingBody``."""

    async def read(self, n: int = -1) -> bytes: ...


class RawBody:
    """A whole body read from a stream: a ``PUT``/``POST`` of raw audio, or a download."""

    def __init__(self, stream: Readable | StreamReader, idle_timeout: float) -> None:
        self._stream = stream
        self._idle = idle_timeout

    async def read(self, n: int) -> bytes:
        return await guarded(self._stream.read(n), self._idle)


#: A raw body with at least this many bytes still to come from the socket is read by a
#: worker thread (:class:`SocketBody`); a smaller rest is read on the event loop.
DIRECT_MIN = 256 * 1024
#: Seconds a refused upload's unread body is read and dropped after its answer, at most
#: (aiohttp's lingering time).
LINGER_SECONDS = 10.0


_NOTHING = memoryview(b"")


class SocketReader:
    """The rest of a request's Content-Length body, read straight from the connection's
    socket by a worker thread: blocking ``recv_into`` calls into the caller's buffer (they
    release the GIL), no event-loop work per byte. Made by :meth:`SocketBody.direct`."""

    def __init__(self, pending: bytes, sock: socket.socket, left: int,
                 idle_timeout: float) -> None:
        self._pending = memoryview(pending)
        self._sock = sock
        self._left = left
        self._idle = idle_timeout
        sock.settimeout(idle_timeout)  # the descriptor stays non-blocking; waits poll

    def fill(self, view: memoryview) -> int:
        """Blocking: fill ``view`` with the body's next bytes; fewer than ``len(view)`` only
        at its end. Raises :class:`Stalled` (408 ``body_timeout``) after ``idle_timeout``
        seconds without a byte, :class:`Malformed` (400 ``client_disconnected``) when the
        body breaks off."""
        got, room = 0, len(view)
        if self._pending:
            got = min(len(self._pending), room)
            view[:got] = self._pending[:got]
            # Once all taken, let the bytes go (an empty slice would still hold them).
            self._pending = self._pending[got:] if got < len(self._pending) else _NOTHING
        while got < room and self._left:
            try:
                n = self._sock.recv_into(view[got:], min(room - got, self._left))
            except TimeoutError:
                raise Stalled("body_timeout",
                              f"no body bytes for {self._idle:g} seconds") from None
            except OSError as exc:
                raise Malformed("client_disconnected", f"the body broke off: {exc}") from exc
            if not n:
                raise Malformed("client_disconnected",
                                f"the body broke off: {self._left} bytes short of its length")
            got += n
            self._left -= n
        return got

    @property
    def left(self) -> int:
        """Body bytes not read yet."""
        return len(self._pending) + self._left

    def discard(self, seconds: float) -> None:
        """Blocking: read and drop the rest of the body, for ``seconds`` at most, so that
        closing the connection does not reset it under its answer (what aiohttp's lingering
        close does for bodies it reads). Never raises."""
        deadline = time.monotonic() + seconds
        self._pending = _NOTHING
        scratch = memoryview(bytearray(64 * 1024))
        with contextlib.suppress(OSError):
            while self._left and (wait := deadline - time.monotonic()) > 0:
                self._sock.settimeout(wait)
                n = self._sock.recv_into(scratch, min(len(scratch), self._left))
                if not n:
                    return
                self._left -= n

    def interrupt(self) -> None:
        """Wake a thread waiting in :meth:`fill` (it fails with ``client_disconnected``);
        the connection reads no more. Safe from any thread."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RD)

    def close(self) -> None:
        """Close the duplicate socket (the connection itself stays aiohttp's)."""
        self._sock.close()


class SocketBody(RawBody):
    """A raw ``Content-Length`` body (a Kazoo ``PUT``) that ingest may take off the event
    loop: read from ``request.content`` like :class:`RawBody`, until :meth:`direct` hands the
    rest to a worker thread. The request's middleware then answers, drops what is left
    (:meth:`linger`) and closes (:data:`DETACHED`)."""

    def __init__(self, request: web.BaseRequest, connection: Connection,
                 idle_timeout: float, threads: Executor) -> None:
        super().__init__(request.content, idle_timeout)
        self._request = request
        self._connection = connection
        self._threads = threads
        self._reader: SocketReader | None = None

    def direct(self) -> SocketReader | None:
        """The rest of the body as a :class:`SocketReader`, or None when it stays on the
        event loop (fewer than :data:`DIRECT_MIN` bytes to come, or the connection cannot
        hand it over: :meth:`recsink.connections.Connection.detach`)."""
        if self._reader is None:
            detached = self._connection.detach(self._request, DIRECT_MIN)
            if detached is not None:
                pending, sock, left = detached
                self._reader = SocketReader(pending, sock, left, self._idle)
                self._request[DETACHED] = self
        return self._reader

    async def linger(self) -> None:
        """Once the answer is sent: drop what is left of a body handed to a worker thread
        (an upload refused or found a duplicate before its end), for up to
        :data:`LINGER_SECONDS`, so that the client reads its answer before the connection
        closes. Then the duplicate socket is closed and the body is over for aiohttp too."""
        reader = self._reader
        if reader is None:
            return
        if reader.left:
            await asyncio.get_running_loop().run_in_executor(
                self._threads, reader.discard, LINGER_SECONDS)
        self.close()

    def close(self) -> None:
        """Close the duplicate socket, and end the body for aiohttp (no lingering). The
        request lets go of this body (which held it: a cycle, and the bytes it holds would
        wait for the garbage collector's oldest generation)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
            self._request.content.feed_eof()
            self._request.pop(DETACHED, None)


#: The request's :class:`SocketBody` once it handed its body to a worker thread: the
#: middleware calls its :meth:`~SocketBody.linger` once the answer is sent.
DETACHED: web.RequestKey[SocketBody] = web.RequestKey("detached")


def raw_body(request: web.BaseRequest, registry: Registry, idle_timeout: float,
             threads: Executor) -> RawBody:
    """A raw request body: a :class:`SocketBody` when the request came through a recsink
    :class:`~recsink.connections.Connection` with a ``Content-Length`` (handed to a body
    thread of ``threads`` at once when enough of it is still to come), else a
    :class:`RawBody`. Call it once the request is admitted: a body handed over is read (or,
    once answered, dropped) to its end."""
    connection = registry.of(request)
    if connection is None or request.content_length is None:
        return RawBody(request.content, idle_timeout)
    body = SocketBody(request, connection, idle_timeout, threads)
    body.direct()  # hand it over now: aiohttp reads (and buffers) no more of it
    return body


class ChunksBody:
    """A body delivered as an async iterator of chunks (Azure's ``download_blob().chunks()``)."""

    def __init__(self, chunks: AsyncIterator[bytes], idle_timeout: float) -> None:
        self._chunks = chunks
        self._idle = idle_timeout

    async def read(self, n: int) -> bytes:
        return await guarded(anext(self._chunks, b""), self._idle)


_BASE64_START = re.compile(rb"[A-Za-z0-9+/]{8}")
#: base64 of what a recording (or Kazoo's probe) starts with: "ID3", "RIFF", an MPEG frame
#: sync byte 0xFF (``/`` then one of ``+/0-9A-Za-z``), "some random content: ".
_BASE64_MAGIC = (b"SUQz", b"UklGR", b"/", b"c29tZSByYW5kb20gY29udGVudDog")


class PartBody:
    """One ``multipart/form-data`` part; base64 content is decoded as it streams.

    Kazoo's ``base64_encode_data`` sends the media part as base64 without a
    Content-Transfer-Encoding header (specs/kazoo.md §4.2), so encoding is recognised from the
    part's first bytes: raw audio never starts with base64 text, and the base64 of a
    recording's magic bytes is distinctive.
    """

    def __init__(self, part: BodyPartReader, idle_timeout: float) -> None:
        self._part = part
        self._idle = idle_timeout
        self._base64: bool | None = None
        self._carry = b""  # base64 characters after the last complete quartet

    async def read(self, n: int) -> bytes:
        while True:
            try:
                data = await guarded(self._part.read_chunk(max(n, 8192)), self._idle)
            except ValueError as exc:  # aiohttp: the body ended before the part's boundary
                raise Malformed(
                    "bad_multipart", f"the multipart body is truncated or malformed: {exc}",
                ) from None
            if not data and not self._part.at_eof():
                # aiohttp answers b"" before it sees that the stream ended without the
                # part's boundary; asking again raises (above) instead of ending quietly.
                continue
            if self._base64 is None and data:
                self._base64 = _looks_base64(data)
            if not self._base64:
                return data
            decoded = self._decode(data)
            if decoded or not data:
                return decoded

    def _decode(self, data: bytes) -> bytes:
        text = self._carry + data.replace(b"\r", b"").replace(b"\n", b"")
        if data:
            cut = len(text) - len(text) % 4
            text, self._carry = text[:cut], text[cut:]
        elif text and len(text) % 4:
            raise Malformed("bad_base64", "the media part's base64 is truncated")
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as exc:
            raise Malformed("bad_base64", f"the media part is not valid base64: {exc}") from exc


def _looks_base64(data: bytes) -> bool:
    return bool(_BASE64_START.match(data)) and data.startswith(_BASE64_MAGIC)
