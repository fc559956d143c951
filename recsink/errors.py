"""Domain errors: what recsink decided it cannot do, named, without an HTTP status.

Ingest, storage, the catalog and the source adapters raise these; one table at the web edge
(:mod:`recsink.responses`) turns each kind into a status and a JSON body ``{"error": <code>,
"detail": <text>}`` (DESIGN.md "Errors: decided inside, mapped at the edge"). Background work
(pulls, shipping, settling) records the same codes as its failure reasons.

Every error carries a stable machine-readable ``code`` (``too_large``, ``storage_full``,
``bad_signature``, …), one human sentence as ``detail``, and ``fields`` for its log line
(bytes received so far, the record id, …). :class:`Unavailable` errors also say after how many
seconds trying again makes sense (``retry_after``).
"""

from __future__ import annotations

import re
from typing import Any

#: A lone surrogate: from bytes decoded with ``surrogateescape`` (U+DC80-U+DCFF stand for
#: bytes 0x80-0xFF), or from a JSON ``\ud800`` escape.
_SURROGATE = re.compile("[\ud800-\udfff]")


def visible(text: str) -> str:
    """``text`` with every lone surrogate written out: ``\\xNN`` for a byte that was not
    UTF-8 (surrogateescape), ``\\udNNN`` for any other; such text cannot be encoded, and
    JSON would show ``"\\udcff"`` for a byte 0xff."""
    def escape(match: re.Match[str]) -> str:
        point = ord(match[0])
        return f"\\x{point - 0xDC00:02x}" if 0xDC80 <= point <= 0xDCFF else f"\\u{point:04x}"
    return _SURROGATE.sub(escape, text)


class RecsinkError(Exception):
    """A request or job recsink refuses or could not complete; see the module docstring.
    Request bytes quoted in ``detail`` that are not UTF-8 show as ``\\xNN``
    (:func:`visible`)."""

    def __init__(self, code: str, detail: str, **fields: Any) -> None:
        detail = visible(detail)
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.fields = fields

    def body(self) -> dict[str, str]:
        """The JSON body of the answer."""
        return {"error": self.code, "detail": self.detail}

    def reason(self) -> str:
        """``<code>: <detail>``, as a failed job records it."""
        return f"{self.code}: {self.detail}"


class Malformed(RecsinkError):
    """The request, its metadata, its framing or its body is not what the sender's wire
    format says (a body that broke off or is shorter than declared included)."""


class HeadTooLarge(Malformed):
    """A request head over the size recsink or aiohttp's parser takes (431)."""


class Unauthorized(RecsinkError):
    """Credentials or a callback signature are missing or wrong; ``challenge`` names the
    scheme to answer with (``Basic realm="recsink"``), if any."""

    def __init__(self, code: str, detail: str, *, challenge: str | None = None,
                 **fields: Any) -> None:
        super().__init__(code, detail, **fields)
        self.challenge = challenge


class Forbidden(RecsinkError):
    """The client's address is not allowed."""


class NotFound(RecsinkError):
    """Nothing is stored (or routed) where the request points."""


class Stalled(RecsinkError):
    """The body stopped arriving for longer than ``server.body_idle_timeout``."""


class TooLarge(RecsinkError):
    """The body is over its cap (``ingest.max_bytes``, or a callback's own limit)."""


class NotAudio(RecsinkError):
    """The body is not a recording in an accepted format (sniffed from its bytes)."""


class UnsupportedEncoding(RecsinkError):
    """The body has a content coding (``Content-Encoding: gzip``, ``deflate``, ``br``, …):
    recsink stores bodies exactly as sent and never decodes them."""


class Locked(RecsinkError):
    """The recording may not be deleted: a legal hold is on it (``legal_hold``), or
    storage refuses to remove its object (``object_locked``: S3 Object Lock)."""


class Unavailable(RecsinkError):
    """recsink cannot do it now (storage, catalog, another instance busy with the same
    recording, stopping); nothing was kept. Try again in ``retry_after`` seconds."""

    def __init__(self, code: str, detail: str, *, retry_after: int = 30, **fields: Any) -> None:
        super().__init__(code, detail, **fields)
        self.retry_after = retry_after


class Full(RecsinkError):
    """Where recsink writes (storage, spool or catalog) is out of space; nothing was kept."""
