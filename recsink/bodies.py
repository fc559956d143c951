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
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol, TypeVar

from aiohttp import BodyPartReader, ClientPayloadError, StreamReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiMapping

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
