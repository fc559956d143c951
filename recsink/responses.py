"""The web edge's one table: domain errors (:mod:`recsink.errors`) → HTTP statuses and JSON
bodies (DESIGN.md "HTTP errors"; httpx's ``map_httpcore_exceptions`` is the model).

Nothing inside recsink picks a status: ingest, storage, the catalog and the adapters raise a
kind of error, and :func:`error_response` answers it here, with ``Retry-After`` for
:class:`~recsink.errors.Unavailable`. An exception that is not a domain error is a bug:
``500 internal_error``.
"""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web

from recsink.errors import (
    Forbidden,
    Full,
    HeadTooLarge,
    Locked,
    Malformed,
    NotAudio,
    NotFound,
    RecsinkError,
    Stalled,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedEncoding,
)

#: Each kind of domain error and its status; subclasses answer as their nearest listed base.
STATUSES: Final[dict[type[RecsinkError], int]] = {
    Malformed: 400,
    HeadTooLarge: 431,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Locked: 409,
    Stalled: 408,
    TooLarge: 413,
    NotAudio: 415,
    UnsupportedEncoding: 415,
    Unavailable: 503,
    Full: 507,
}


def status_of(exc: RecsinkError) -> int:
    """The HTTP status of a domain error (500 for a kind missing from :data:`STATUSES`)."""
    for kind in type(exc).__mro__:
        if kind in STATUSES:
            return STATUSES[kind]
    return 500


def internal_error() -> RecsinkError:
    """What a bug is answered with (the traceback goes to the log only)."""
    return RecsinkError("internal_error", "recsink could not handle this request")


def error_response(exc: RecsinkError, status: int | None = None) -> web.Response:
    """The JSON answer to ``exc``: ``{"error", "detail"}`` with its status (or ``status``,
    for errors aiohttp decided itself), ``Retry-After`` when trying again helps, and
    ``Accept-Encoding: identity`` for an encoded body (RFC 9110 §15.5.16)."""
    headers = {}
    if isinstance(exc, Unavailable):
        headers[hdrs.RETRY_AFTER] = str(exc.retry_after)
    if isinstance(exc, Unauthorized) and exc.challenge:
        headers[hdrs.WWW_AUTHENTICATE] = exc.challenge
    if isinstance(exc, UnsupportedEncoding):
        headers[hdrs.ACCEPT_ENCODING] = "identity"
    return web.json_response(exc.body(), status=status or status_of(exc), headers=headers)
