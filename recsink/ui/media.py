"""A recording's audio for the console: played (inline) or downloaded (attachment), with
byte ranges (RFC 9110 §14: ``Range: bytes=…`` answered 206 with ``Content-Range``, or 416
``Content-Range: bytes */<size>`` when unsatisfiable; ``Accept-Ranges: bytes`` always), for
disk and S3 storage alike (S3: a ranged GetObject)."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import hdrs, web

from recsink import logs, state
from recsink.catalog import Recording
from recsink.errors import NotFound
from recsink.sending import send_object

BLOCK = 256 * 1024


def download_name(record: Recording) -> str:
    """The file name a download gets: the original name, else ``<id>.<format>``."""
    return record.name or f"{record.id}.{record.format or 'bin'}"


def _disposition(kind: str, name: str) -> str:
    """``Content-Disposition`` (RFC 6266): an ASCII fallback and the UTF-8 name (RFC 8187)."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                       for c in name)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class Unsatisfiable(Exception):
    """The Range asked for cannot be served (416)."""


def _range(request: web.Request, size: int) -> tuple[int, int] | None:
    """The (start, end inclusive) the request's Range asks for, None without one. Raises
    :class:`Unsatisfiable` when it cannot be served (several ranges, or none inside)."""
    if hdrs.RANGE not in request.headers:
        return None
    try:
        wanted = request.http_range
    except ValueError:
        raise Unsatisfiable from None
    start, stop = wanted.start, wanted.stop
    if start is None and stop is None:
        return None
    if start is None:
        start = 0
    if start < 0:  # a suffix: the last -start bytes
        start = max(size + start, 0)
    end = size - 1 if stop is None else min(stop, size) - 1
    if start >= size or end < start:
        raise Unsatisfiable
    return start, end


async def serve(request: web.Request, record: Recording, *, attachment: bool,
                who: str) -> web.StreamResponse:
    """Stream ``record``'s object (the whole of it, or the asked range: opened before the
    headers go out, :func:`~recsink.sending.send_object`), logging
    ``ui.downloaded`` or ``ui.played`` with the token's name ``who`` and the range. Raises
    404 ``not_found`` when there is no stored audio (a tombstone, a failed recording)."""
    if record.storage_key is None or record.byte_size is None or record.status != "completed":
        raise NotFound("not_found", f"recording {record.id} has no stored audio")
    size = record.byte_size
    try:
        asked = _range(request, size)
    except Unsatisfiable:
        refusal = web.Response(status=416, headers={
            hdrs.CONTENT_RANGE: f"bytes */{size}", hdrs.ACCEPT_RANGES: "bytes"})
        await refusal.prepare(request)  # sent as it is: not made a JSON error
        return refusal
    start, end = asked if asked is not None else (0, size - 1)
    length = end - start + 1 if size else 0
    headers = {hdrs.CONTENT_TYPE: record.media_type or "application/octet-stream",
               hdrs.ACCEPT_RANGES: "bytes", hdrs.CACHE_CONTROL: "private, no-store",
               hdrs.X_CONTENT_TYPE_OPTIONS: "nosniff",
               hdrs.CONTENT_DISPOSITION: _disposition(
                   "attachment" if attachment else "inline", download_name(record))}
    if asked is not None:
        headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end}/{size}"
    response = web.StreamResponse(status=206 if asked is not None else 200, headers=headers)
    response.content_length = length
    logs.get_logger().info("ui.downloaded" if attachment else "ui.played", id=record.id,
                           token=who, start=start, bytes=length, method=request.method,
                           purpose="waveform" if request.headers.get("X-Purpose") == "waveform"
                           else "listen" if not attachment else "save")
    await send_object(request, response, request.app[state.STORAGE], record.storage_key,
                      size, BLOCK, start, length)
    return response
