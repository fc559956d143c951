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
wherever they appear in a value (DESIGN.md invariant 6).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
           "warning": logging.WARNING, "error": logging.ERROR}

REDACTED = "***"


class Redactor:
    """structlog processor that replaces every configured secret in string values."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if self._secrets:
            for key, value in event.items():
                if isinstance(value, str):
                    event[key] = self.scrub(value)
        return event

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


def _event_first(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Put ``ts``, ``level`` and ``event`` at the start of the line, for people reading it."""
    head = {k: event.pop(k) for k in ("ts", "level", "event") if k in event}
    return {**head, **event}


def configure(level: str = "info", secrets: Iterable[str] = (), stream: Any = None) -> None:
    """Send structlog events and stdlib log records to ``stream`` (stdout) as JSON lines."""
    out = stream or sys.stdout
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.format_exc_info,
        Redactor(secrets),
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


def clear_request() -> None:
    """Forget the context of the previous request on this task (keep-alive connections)."""
    structlog.contextvars.clear_contextvars()


def bind_request(**fields: Any) -> None:
    """Bind context to every later log line of the current request (task)."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in fields.items() if v is not None})


def get_logger() -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("recsink")
    return logger
