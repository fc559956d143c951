"""Structured logs: one JSON object per line on stdout, one line per event.

A line looks like::

    {"ts": "2026-11-21T09:30:12.345678Z", "level": "info", "event": "recording.stored",
     "source": "kazoo", "id": "rec_…", "call_id": "a84b…@pc33…", "recording_id": "202403-0a1b…",
     "bytes": 1034, "sha256": "…", "elapsed_ms": 3.1, "request_id": "6f1c0d2e9a4b7c3d"}

Event names are ``noun.verb`` (``recording.stored``, ``recording.duplicate``,
``upload.rejected``, ``upload.failed``, ``server.listening``). Request context
(``request_id``, ``call_id``, ``recording_id``) is bound with :func:`bind_request` and
merged into every line of that request. Library log records (aiohttp, asyncio) are rendered
the same way. Configured secrets never reach the output: :class:`Redactor` replaces them
wherever they appear in a value, raw, percent-encoded or Base64-encoded, along with any
``Basic``/``Bearer`` credential and the credentials and query string of any URL (DESIGN.md
invariant 6).
"""

from __future__ import annotations

import base64
import logging
import re
import sys
import time
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
           "warning": logging.WARNING, "error": logging.ERROR}

REDACTED = "***"

#: ``scheme://`` at the start of a URL.
_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"
#: Credentials in a URL (the password of ``scheme://user:pass@host``, all of
#: ``scheme://token@host``) and a URL's query string.
_URL_USERINFO = re.compile(rf"({_SCHEME}(?:[^\s/?#@:'\"<>]*:)?)[^\s/?#@'\"<>]*@")
_URL_QUERY = re.compile(rf"({_SCHEME}[^\s?#'\"<>]*)\?[^\s#'\"<>]*")
_URL = re.compile(rf"{_SCHEME}[^\s'\"<>]*")
#: An Authorization value (``Basic <base64>``, ``Bearer <token>``) anywhere in a text: one
#: with a digit or a symbol in it, so that prose ("bearer tokens") is left alone.
_AUTHORIZATION = re.compile(
    r"\b((?i:basic|bearer)\s+)(?=[A-Za-z0-9+/=._~-]*[0-9+/=_~-])[A-Za-z0-9+/=._~-]{8,}")


def _any_encoding(secret: str) -> str:
    """A pattern matching ``secret`` with any of its characters percent-encoded (UTF-8,
    either case of hex digits) or, for a space, written ``+``: the forms ``quote``,
    ``quote_plus`` and every client's own encoder produce."""
    parts = []
    for char in secret:
        options = [re.escape(char)]
        options.append("".join(f"%(?i:{b:02x})" for b in char.encode()))
        if char == " ":
            options.append(r"\+")
        parts.append("(?:" + "|".join(options) + ")")
    return "".join(parts)


def secret_forms(secret: str) -> list[str]:
    """The texts that stand for ``secret`` in a log line: itself, and its Base64 (standard
    and URL-safe alphabets, padding dropped: HTTP Basic's ``user:password`` and anything
    else sent Base64-encoded). Each is matched percent-encoded too (:func:`_any_encoding`)."""
    encoded = secret.encode()
    forms = {secret}
    if len(encoded) >= 3:  # shorter ones encode to 4 characters that occur anywhere
        forms |= {base64.b64encode(encoded).decode().rstrip("="),
                  base64.urlsafe_b64encode(encoded).decode().rstrip("=")}
    return sorted(forms, key=len, reverse=True)


class Redactor:
    """structlog processor that replaces secrets in string values: every configured secret
    in any of its forms (:func:`secret_forms`, raw or percent-encoded), the value of any
    ``Basic``/``Bearer`` credential, and the credentials and query string of any URL."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms = {f for s in secrets if s for f in secret_forms(s)}
        # Longest first, so a secret that contains another is replaced whole.
        patterns = [_any_encoding(f) for f in sorted(forms, key=len, reverse=True)]
        self._secrets = re.compile("|".join(patterns)) if patterns else None

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.scrub(value)
            elif isinstance(value, list | tuple) and any(isinstance(v, str) for v in value):
                event[key] = [self.scrub(v) if isinstance(v, str) else v for v in value]
        return event

    def scrub(self, text: str) -> str:
        """``text`` with every secret, credential and URL query replaced by ``***``."""
        text = _AUTHORIZATION.sub(rf"\1{REDACTED}", text)
        if "://" in text:
            text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
            text = _URL_QUERY.sub(rf"\1?{REDACTED}", text)
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        return text


#: The redactor of the process's logs (:func:`configure`), also for texts that leave
#: recsink another way (error details in the API): :func:`redact`.
_redactor = Redactor(())


def redact(text: str) -> str:
    """``text`` as a log line would show it: configured secrets (in every form), credentials
    and URL query strings replaced by ``***``."""
    return _redactor.scrub(text)


def safe_url(url: str) -> str:
    """What may be shown of a location (a media URL may open without authentication):
    ``scheme://host[:port]``, then ``/…`` when it had a path; never its user, password,
    path or query."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # not even a URL (a bad port, say): its scheme only
        return url.partition(":")[0][:16] + ":…" if ":" in url else "…"
    if not parts.scheme:
        return "…"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    return shown + ("/…" if parts.path.strip("/") or parts.query else "")


def redact_urls(text: str) -> str:
    """:func:`redact`, and every URL in ``text`` shortened to :func:`safe_url`: for error
    texts that may quote a media location (a pull's reason, kept and served by the API)."""
    return _URL.sub(lambda m: safe_url(m[0]), redact(text))


def _event_first(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Put ``ts``, ``level`` and ``event`` at the start of the line, for people reading it."""
    head = {k: event.pop(k) for k in ("ts", "level", "event") if k in event}
    return {**head, **event}


def configure(level: str = "info", secrets: Iterable[str] = (), stream: Any = None) -> None:
    """Send structlog events and stdlib log records to ``stream`` (stdout) as JSON lines."""
    global _redactor
    out = stream or sys.stdout
    _redactor = Redactor(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.format_exc_info,
        _redactor,
        _event_first,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # aiohttp and asyncio log through the stdlib; give their records the same shape.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # The access log repeats what our own events say, with the raw URL (and its tokens).
    logging.getLogger("aiohttp.access").disabled = True


class Throttle:
    """At most one log line per ``interval`` seconds for an event that can repeat without
    bound (a connection flood, a full file-descriptor table); the rest are counted.

    ``allow()`` returns None to hold the current line back, else how many were held back
    since the last line let through (to log as ``suppressed``).
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = float("-inf")
        self._held = 0

    def allow(self) -> int | None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return None
        self._next = now + self._interval
        held, self._held = self._held, 0
        return held


def clear_request() -> None:
    """Forget the context of the previous request on this task (keep-alive connections)."""
    structlog.contextvars.clear_contextvars()


def bind_request(**fields: Any) -> None:
    """Bind context to every later log line of the current request (task)."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in fields.items() if v is not None})


def get_logger() -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("recsink")
    return logger
