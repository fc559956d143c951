"""The HTTP error vocabulary: every refusal recsink answers, as one exception type.

Each error becomes a short JSON body ``{"error": <code>, "detail": <text>}`` with its status
(DESIGN.md "HTTP errors"); the error middleware in :mod:`recsink.app` renders and logs it.
"""

from __future__ import annotations

from typing import Any


class RecsinkError(Exception):
    """A request recsink refuses or could not complete.

    ``status``: the HTTP status; ``error``: a stable machine-readable code; ``detail``: one
    human sentence; ``headers``: extra response headers (``Retry-After``);
    ``fields``: context for the log line (bytes received so far, …).
    """

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}
        self.fields = fields

    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}


def bad_request(error: str, detail: str, **fields: Any) -> RecsinkError:
    return RecsinkError(400, error, detail, **fields)


def unavailable(error: str, detail: str, retry_after: int = 30, **fields: Any) -> RecsinkError:
    """503 with ``Retry-After`` seconds: storage is unavailable and nothing was kept."""
    return RecsinkError(503, error, detail, headers={"Retry-After": str(retry_after)}, **fields)
